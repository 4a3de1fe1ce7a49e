"""Hand-written kernels: the fused WaveNet step in OpenAI Triton (`triton_step`), its weight packing
and host runner (`triton_runner`), and its ahead-of-time PTX compile (`triton_aot`).

Importing this package imports nothing heavy; `triton` is imported by the modules that need it.
"""
