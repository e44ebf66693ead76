"""Exporting TimeSformer checkpoints to the epic-stream ONNX model contract (needs the `train` extra)."""
