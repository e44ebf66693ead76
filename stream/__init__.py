"""epic-stream: real-time action classification of a video stream with an ONNX model.

Only numpy, OpenCV, ONNX Runtime and rich are needed here; torch is never imported.
"""

__version__ = "0.1.0"
