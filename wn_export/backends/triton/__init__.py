"""Triton backend: the fused WaveNet step as one OpenAI Triton kernel (`kernel.py`, the single source of
truth), its weight packing (`layout.py`), the host runner (`runner.py`), the ahead-of-time PTX compile
(`aot.py`) and the parity/bench checks for a GPU (`check.py`). Importing this package imports nothing
heavy; `triton` loads in the modules that need it. See plugins/triton/README.md for the kernel contract."""
