"""The one small exception hierarchy for errors a user can cause.

The CLI turns any `WNExportError` into a one-line message and a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class WNExportError(Exception):
    """Base class: an error caused by the user's input (config, checkpoint, files, options)."""


class ConfigError(WNExportError):
    """An invalid or unsupported model configuration."""


class CheckpointError(WNExportError):
    """A missing, corrupt or mismatched checkpoint."""


class InputError(WNExportError):
    """Inputs of the wrong shape, dtype or range."""


class OutputError(WNExportError):
    """An output path that cannot be written, or that would overwrite one of the command's inputs."""


class LimitError(WNExportError):
    """A size above a resource limit (`reference_model.limits`); the message names the limit to raise."""
