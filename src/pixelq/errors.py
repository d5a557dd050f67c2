"""pixelq's exception hierarchy: every error a user can cause is one of these."""


class PixelqError(Exception):
    """Base class of every error pixelq raises on purpose."""


class DataError(PixelqError, ValueError):
    """A data source is missing, corrupt, truncated or in a layout pixelq does not know."""


class InputError(DataError):
    """A tensor given to a model or function has the wrong dtype or shape."""


class ConfigError(PixelqError, ValueError):
    """An unknown name, a bit width out of range, or an inconsistent setting."""


class CheckpointError(PixelqError):
    """A checkpoint file is missing, corrupt, or was written by an incompatible version."""


class TrainingError(PixelqError):
    """Training cannot go on: the loss became non-finite (the run diverged)."""


class ExportError(PixelqError):
    """A model cannot be lowered to integers (unsupported layer or precision), or a model file is bad."""


class ModelFileError(ExportError):
    """A .pxq model file is missing, truncated, altered, or of a version this pixelq cannot read."""
