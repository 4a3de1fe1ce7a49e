"""Python-backend model sources that `wn-export triton` copies into a model repository (as `1/model.py`)."""
