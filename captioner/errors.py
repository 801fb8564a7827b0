"""The errors a user can meet: each is one sentence that names the file or value at fault.

The command line prints them as `captioner: error: ...` (exit status 2); anything else is a bug.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the file or key at fault."""


class DataError(ValueError):
    """A data file that is missing or malformed; the message names the file and the fault."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, foreign or made for another architecture."""


class ImageLoadError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


class EncoderError(RuntimeError):
    """A backbone that cannot be built or whose weights cannot be loaded."""


class DistributedError(RuntimeError):
    """A torchrun environment that cannot be used."""


class TrainingError(RuntimeError):
    """Training that cannot go on: a loss or weights that are no longer finite numbers."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, ImageLoadError, EncoderError, DistributedError, TrainingError)
