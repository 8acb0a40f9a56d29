"""Exceptions the CLI turns into exit code 2 and one line telling the user what to do."""


class UserError(Exception):
    """A mistake the user can fix: bad recipe, bad data, missing weights. Exit code 2."""


class PeerStopped(UserError):
    """Under DDP: rank 0 stopped with an error it has printed; this rank exits with code 2 without a line."""


class DiskError(UserError):
    """A write the disk refused (full, failing, read-only): the previous file is intact. Exit code 2."""


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


class FieldError(ValueError):
    """A bad value for one recipe field, raised by a dataclass's ``__post_init__``.

    The recipe loader adds the key path and the file, and turns it into a UserError.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message
