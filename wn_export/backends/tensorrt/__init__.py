"""TensorRT backend: engine builds (TensorRT or TensorRT-RTX, strongly typed), engine records in the
manifest, and the GPU runners. Heavy imports happen inside the functions that need them."""
