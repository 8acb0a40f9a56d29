"""Offline dataset generators (shapes for classification and detection, espeak-ng speech) and the file
formats they write. They import no modality: the modalities call them for `synthetic:` data formats.

The names the recipe schema checks live here, without importing a generator (numpy, soundfile, PIL).
"""

# speech-ctc synthetic sentences (suite.datasets.speech): mixed commands, statements, answers and digit strings,
# or connected digits only (3-6, like TIDIGITS), the smaller task a from-scratch CTC model learns within minutes
SENTENCE_STYLES = ("mixed", "digits")
