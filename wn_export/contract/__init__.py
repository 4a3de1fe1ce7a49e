"""The I/O contract of the exported graphs and `manifest.json`: specs, roles, graph names, typed manifest
records. Torch-free: a host that only reads manifests and runs ONNX Runtime imports this alone."""

from wn_export.contract.manifest import (
                                         EngineRecord,
                                         GraphRecord,
                                         Manifest,
                                         StateRecord,
                                         TensorRecord,
                                         read_manifest,
                                         sha256,
                                         write_manifest,
)
from wn_export.contract.specs import (
                                         LAYOUTS,
                                         WAVENET_STEP_PLUGIN,
                                         GraphSpec,
                                         PluginSpec,
                                         Role,
                                         StateSpec,
                                         TensorSpec,
                                         fused_step_spec,
                                         graph_name,
                                         ring_offsets,
                                         scoring_spec,
                                         step_spec,
                                         upsample_spec,
)

__all__ = ["EngineRecord", "GraphRecord", "Manifest", "StateRecord", "TensorRecord", "read_manifest", "sha256",
           "write_manifest", "LAYOUTS", "WAVENET_STEP_PLUGIN", "GraphSpec", "PluginSpec", "Role", "StateSpec",
           "TensorSpec", "fused_step_spec", "graph_name", "ring_offsets", "scoring_spec", "step_spec", "upsample_spec"]
