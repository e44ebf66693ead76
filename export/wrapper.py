"""The whole contract as one torch module: uint8 BGR clips in, softmax probabilities out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from train.normalize import REFERENCE_MEAN, REFERENCE_STD, FrameNormalizer


class ContractModel(nn.Module):
    """uint8 BGR [B, T, S, S, 3] -> float32 probabilities [B, C].

    The front is training's own :class:`FrameNormalizer`, so the exported graph does the exact
    arithmetic the network was trained with; ``network`` maps [B, 3, T, S, S] to logits [B, C].
    """

    def __init__(
        self,
        network: nn.Module,
        mean: Sequence[float] = REFERENCE_MEAN,
        std: Sequence[float] = REFERENCE_STD,
    ):
        super().__init__()
        self.normalizer = FrameNormalizer(mean, std)
        self.network = network

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        logits = self.network(self.normalizer(frames))
        # Softmax in float32 whatever the network computes in, so the scores keep their precision.
        return logits.float().softmax(dim=-1)
