"""Importers: checkpoints of other WaveNet implementations → our reference model (`wn-export import`).

`r9y9` (wavenet_vocoder PyTorch checkpoints), `ibab` (tensorflow-wavenet TensorFlow checkpoints, read by
`tf_checkpoint` without TensorFlow) and `keras` (Keras 3 `.keras` files, read with json + h5py). Each
importer reads the other implementation's checkpoint, folds what our model does not store
(weight normalisation, biases that add to the same pre-activation), maps the tensors onto
`reference_model.WaveNet` and returns the model; anything it cannot map raises `ImportError_` naming
the setting.
"""

from wn_export.importers.common import ImportError_, fold_weight_norm, load_torch_state_dict
from wn_export.importers.ibab import import_ibab
from wn_export.importers.keras import import_keras
from wn_export.importers.r9y9 import R9Y9_DEFAULTS, import_r9y9

__all__ = ["ImportError_", "fold_weight_norm", "load_torch_state_dict", "import_r9y9",
           "R9Y9_DEFAULTS", "import_ibab", "import_keras"]
