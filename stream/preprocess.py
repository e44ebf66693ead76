"""The one preprocessing function shared by streaming and training evaluation.

A frame is resized so that its short side is ``size`` and then centre-cropped to ``size x size``.
Training's evaluation transform calls this same function, so the model sees the same pixels
live as it saw when it was validated.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_and_crop(frame: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``frame`` (H x W x 3 uint8, any channel order) resized short side to ``size``, centre-cropped.

    The result is a new C-contiguous uint8 array of shape (size, size, 3), or ``out`` filled with
    it: the streaming ring buffer passes its preallocated slot so that the crop is copied once,
    straight into place.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    if (new_h, new_w) != (height, width):
        # INTER_AREA averages when shrinking (no aliasing on 1080p -> 224); it is also
        # well-defined when enlarging, where it behaves like bilinear.
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA)
    top = (new_h - size) // 2
    left = (new_w - size) // 2
    crop = frame[top : top + size, left : left + size]
    if out is None:
        return np.ascontiguousarray(crop)
    np.copyto(out, crop)
    return out
