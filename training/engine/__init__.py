"""The training engine: plain Python with no Django import, so that a GPU worker can run it."""
