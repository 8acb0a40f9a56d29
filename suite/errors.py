"""Exceptions the CLI turns into exit code 2 and one line telling the user what to do."""


class UserError(Exception):
    """A mistake the user can fix: bad recipe, bad data, missing weights. Exit code 2."""


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""
