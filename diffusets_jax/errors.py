"""The errors diffusets-jax raises for bad input and broken files: one base class, a few kinds.

Every expected failure (a bad argument, a corrupt file, missing metadata) raises a subclass of
`DiffusetsError` whose message names the culprit (file, key, row or option) in one line. The
command line prints that line and exits with status 2; anything else is an internal error and
keeps its traceback. Each kind also derives from the built-in exception it refines, so code that
catches `ValueError` or `FileNotFoundError` keeps working.

    DiffusetsError
    ├── InputError        (ValueError)          a bad argument, condition, CSV row or option
    ├── ConfigError       (ValueError)          a config.json or config override that does not fit
    ├── DataError         (ValueError)          a dataset file or record that cannot be used
    ├── CheckpointError   (ValueError)          a model directory or checkpoint that cannot be restored
    ├── IntegrityError    (ValueError)          a file whose size or SHA-256 differs from its manifest
    └── MissingFileError  (FileNotFoundError)   a file or directory that should exist
"""

from __future__ import annotations


class DiffusetsError(Exception):
    """Base class of the expected failures; the message is one line that names the culprit."""


class InputError(DiffusetsError, ValueError):
    """A bad argument, condition, CSV row or option (out of range, wrong type, not applicable)."""


class ConfigError(DiffusetsError, ValueError):
    """A config file or override that is missing keys, has the wrong type, or cannot be parsed."""


class DataError(DiffusetsError, ValueError):
    """A dataset file or record that cannot be read or used (bad header, missing column, NaNs)."""


class CheckpointError(DiffusetsError, ValueError):
    """A model directory or training checkpoint that cannot be restored (truncated, garbled, NaN weights)."""


class IntegrityError(DiffusetsError, ValueError):
    """A file whose size or SHA-256 does not match the manifest written beside it."""


class MissingFileError(DiffusetsError, FileNotFoundError):
    """A file or directory that should exist does not."""
