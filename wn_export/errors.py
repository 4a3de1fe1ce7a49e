"""Errors a user can cause in the export library (all `WNExportError`, shown as one line by the CLI)."""

from reference_model.errors import CheckpointError, ConfigError, InputError, LimitError, OutputError, WNExportError


class ExportError(WNExportError):
    """The model could not be exported, or an exported graph failed a hygiene check."""


class ArtifactError(WNExportError):
    """An export directory, manifest or graph file is missing, corrupt or inconsistent."""


class BackendError(WNExportError):
    """A backend (onnxruntime, tensorrt, tensorrt_rtx, CUDA) is missing or refused the work."""


class ParityError(WNExportError):
    """A parity check failed: an artifact does not compute what the reference computes."""


__all__ = ["WNExportError", "ConfigError", "CheckpointError", "InputError", "OutputError", "LimitError", "ExportError",
           "ArtifactError", "BackendError", "ParityError"]
