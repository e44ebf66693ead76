"""The contract's front: uint8 BGR frames in, the network's normalized float layout out.

Training, evaluation and the exported ONNX graph all run clips through this one module, so the
model is trained on exactly the arithmetic it is served with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

# The reference TimeSformer (and the original EPIC experiment) normalise with these.
REFERENCE_MEAN = (0.45, 0.45, 0.45)
REFERENCE_STD = (0.225, 0.225, 0.225)


class FrameNormalizer(nn.Module):
    """uint8 BGR [B, T, H, W, 3] -> float RGB [B, 3, T, H, W], scaled to [0, 1] then standardised."""

    def __init__(
        self, mean: Sequence[float] = REFERENCE_MEAN, std: Sequence[float] = REFERENCE_STD
    ):
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        # Folding /255 and the standardisation into one scale and shift keeps the ONNX graph small.
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1, 1), persistent=False)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        rgb = frames.flip(-1)  # BGR -> RGB
        x = rearrange(rgb, "b t h w c -> b c t h w").to(self.scale.dtype)
        return x * self.scale + self.shift
