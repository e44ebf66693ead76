from __future__ import annotations

import numpy as np
import torch

from train.normalize import FrameNormalizer


def test_bgr_uint8_becomes_normalized_rgb_channels_first():
    frames = torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8)
    frames[..., 0] = 255  # blue in BGR
    frames[..., 2] = 0  # red
    out = FrameNormalizer(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(frames)
    assert out.shape == (2, 3, 4, 8, 8)
    assert out.dtype == torch.float32
    # channel 0 is red after the flip: 0 -> (0 - .5)/.5 = -1; channel 2 is blue: 1 -> +1
    torch.testing.assert_close(out[:, 0], torch.full_like(out[:, 0], -1.0))
    torch.testing.assert_close(out[:, 2], torch.full_like(out[:, 2], 1.0))


def test_matches_the_textbook_arithmetic():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 2, 5, 5, 3), dtype=np.uint8)
    mean, std = (0.45, 0.4, 0.35), (0.225, 0.2, 0.25)
    expected = (frames[..., ::-1].astype(np.float64) / 255.0 - mean) / std
    expected = expected.transpose(0, 4, 1, 2, 3)
    out = FrameNormalizer(mean, std)(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
