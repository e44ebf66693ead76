"""Clip transforms: a list of uint8 BGR frames in, one uint8 BGR array [T, S, S, 3] out.

Evaluation uses stream.preprocess.resize_and_crop, the function epic-stream runs live, so a model
is validated on exactly the pixels it will be served. Training jitters around that: the short side
goes to a little more than S and a random S x S window is cut. Every random choice is drawn once
per clip, so all frames of a clip move together and the motion between them stays real.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from stream.errors import OptionError
from stream.preprocess import resize_and_crop

# ITU-R BT.601 luma weights in BGR order, the ones cv2.cvtColor(BGR2GRAY) uses.
_LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


class EvalTransform:
    """Validation and test: resize the short side to ``image_size`` and centre-crop, per frame."""

    def __init__(self, image_size: int):
        if image_size < 1:
            raise OptionError(f"image_size must be at least 1, got {image_size}")
        self.image_size = image_size

    def __call__(
        self, frames: Sequence[np.ndarray], rng: np.random.Generator | None = None
    ) -> np.ndarray:
        return np.stack([resize_and_crop(frame, self.image_size) for frame in frames])


class TrainTransform:
    """Training: scale jitter, random crop, optional horizontal flip and colour jitter.

    * scale jitter: the short side goes to ``image_size * u``, u ~ U(scale_jitter), then a random
      ``image_size`` square is cut (scale_jitter=(1, 1) is a random crop along the long side only);
    * flip (off by default): mirrors the clip, which turns "move left" into "move right". Only
      turn it on when no class depends on left/right direction;
    * colour_jitter c: brightness, contrast and saturation factors each drawn from U(1-c, 1+c).
    """

    def __init__(
        self,
        image_size: int,
        scale_jitter: tuple[float, float] = (1.0, 1.15),
        flip: bool = False,
        color_jitter: float = 0.0,
    ):
        if image_size < 1:
            raise OptionError(f"image_size must be at least 1, got {image_size}")
        low, high = (float(v) for v in scale_jitter)
        if not 1.0 <= low <= high:
            raise OptionError(
                f"scale_jitter must be (low, high) with 1 <= low <= high (the short side must "
                f"cover the crop), got {tuple(scale_jitter)}"
            )
        if not 0.0 <= color_jitter < 1.0:
            raise OptionError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.image_size = image_size
        self.scale_jitter = (low, high)
        self.flip = flip
        self.color_jitter = float(color_jitter)

    def __call__(self, frames: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        size = self.image_size
        short = size * rng.uniform(*self.scale_jitter)
        # Crop offsets as fractions of the free room, so frames of different sizes (rare, but
        # a video may change resolution) still get the same relative window.
        fx, fy = rng.uniform(0.0, 1.0, size=2)
        mirror = self.flip and rng.uniform() < 0.5
        out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            height, width = frame.shape[:2]
            scale = short / min(height, width)
            new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
            if (new_h, new_w) != (height, width):
                shrinking = new_w < width
                interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
                frame = cv2.resize(frame, (new_w, new_h), interpolation=interp)
            top = round(fy * (new_h - size))
            left = round(fx * (new_w - size))
            crop = frame[top : top + size, left : left + size]
            out[i] = crop[:, ::-1] if mirror else crop
        if self.color_jitter > 0:
            out = self._jitter_colour(out, rng)
        return out

    def _jitter_colour(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.color_jitter
        brightness, contrast, saturation = rng.uniform(1 - c, 1 + c, size=3)
        x = clip.astype(np.float32) * brightness
        grey = x @ _LUMA_BGR  # [T, S, S]
        # Contrast pulls every pixel towards the clip's mean grey, one mean for the whole clip.
        x = (x - grey.mean()) * contrast + grey.mean()
        grey = grey[..., None] * contrast + grey.mean() * (1 - contrast)
        x = (x - grey) * saturation + grey
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)
