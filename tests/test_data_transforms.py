"""Clip transforms: evaluation is stream's resize_and_crop; training jitters once per clip."""

from __future__ import annotations

import numpy as np
import pytest

from stream.errors import EpicError
from stream.preprocess import resize_and_crop
from train.transforms import EvalTransform, TrainTransform


def _clip(num_frames=4, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(num_frames)]


def test_eval_transform_is_resize_and_crop_per_frame():
    frames = _clip(h=90, w=160)
    out = EvalTransform(32)(frames)
    assert out.dtype == np.uint8 and out.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(out, np.stack([resize_and_crop(f, 32) for f in frames]))


def test_eval_transform_calls_the_stream_function_itself(monkeypatch):
    # Not a copy of its logic: replacing stream's function changes what evaluation does.
    calls = []

    def spy(frame, size):
        calls.append(size)
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr("train.transforms.resize_and_crop", spy)
    EvalTransform(16)(_clip())
    assert calls == [16, 16, 16, 16]


def _position_coded(num_frames=3, h=60, w=80):
    """Frames whose pixels say where they are (B = column, G = row) and R which frame it is."""
    rows, cols = np.mgrid[0:h, 0:w]
    return [
        np.stack([cols * 3, rows * 4, np.full_like(rows, 50 * t)], axis=-1).astype(np.uint8)
        for t in range(num_frames)
    ]


def test_train_transform_uses_the_same_scale_and_crop_for_every_frame():
    transform = TrainTransform(32, scale_jitter=(1.0, 1.5))
    frames = _position_coded()
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = transform(frames, rng)
        assert out.dtype == np.uint8 and out.shape == (3, 32, 32, 3)
        # Same window in every frame: the position channels agree, the frame channel differs.
        for t in range(1, 3):
            np.testing.assert_array_equal(out[t, ..., :2], out[0, ..., :2])
            assert out[t, ..., 2].mean() > out[t - 1, ..., 2].mean()


def test_train_transform_varies_scale_and_crop_between_clips():
    transform = TrainTransform(32, scale_jitter=(1.0, 1.5))
    frames = _position_coded(1)
    rng = np.random.default_rng(1)
    corners = {tuple(transform(frames, rng)[0, 0, 0, :2]) for _ in range(30)}
    assert len(corners) > 5


def test_train_transform_without_jitter_crops_the_long_side_only():
    frames = _position_coded(1, h=32, w=80)
    out = TrainTransform(32, scale_jitter=(1.0, 1.0))(frames, np.random.default_rng(2))
    # Full height kept (rows 0..31), a 32-column window of the 80.
    np.testing.assert_array_equal(out[0, :, 0, 1], np.arange(32) * 4)
    left = out[0, 0, 0, 0] // 3
    np.testing.assert_array_equal(out[0, 0, :, 0], (left + np.arange(32)) * 3)


def test_flip_is_off_by_default_and_mirrors_the_whole_clip_when_on():
    frames = _position_coded(2, h=32, w=32)
    rng = np.random.default_rng(3)
    plain = TrainTransform(32, scale_jitter=(1.0, 1.0))
    for _ in range(10):
        np.testing.assert_array_equal(plain(frames, rng), np.stack(frames))
    flipping = TrainTransform(32, scale_jitter=(1.0, 1.0), flip=True)
    outs = [flipping(frames, rng) for _ in range(30)]
    mirrored = [o for o in outs if not np.array_equal(o, np.stack(frames))]
    assert 0 < len(mirrored) < 30
    for out in mirrored:
        np.testing.assert_array_equal(out, np.stack(frames)[:, :, ::-1])


def test_colour_jitter_changes_colours_the_same_way_in_every_frame():
    frame = _clip(1, 32, 32)[0]
    frames = [frame, frame.copy(), frame.copy()]
    transform = TrainTransform(32, scale_jitter=(1.0, 1.0), color_jitter=0.4)
    rng = np.random.default_rng(4)
    out = transform(frames, rng)
    assert not np.array_equal(out[0], frame)
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 32, "scale_jitter": (0.8, 1.2)},
        {"image_size": 32, "scale_jitter": (1.3, 1.1)},
        {"image_size": 32, "color_jitter": 1.5},
    ],
)
def test_impossible_train_options_are_user_errors(kwargs):
    with pytest.raises(EpicError):
        TrainTransform(**kwargs)
