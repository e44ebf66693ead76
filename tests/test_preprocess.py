from __future__ import annotations

import numpy as np
import pytest

from stream.preprocess import resize_and_crop


@pytest.mark.parametrize(("h", "w"), [(240, 320), (1080, 1920), (720, 405), (50, 50), (112, 300)])
def test_output_is_square_uint8_contiguous(h, w):
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    out = resize_and_crop(frame, 112)
    assert out.shape == (112, 112, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous


def test_crop_is_centred_on_the_long_side():
    # A landscape frame whose left third is black, middle white, right third black: after the
    # short side matches, the centre crop must be all white.
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[:, 100:200] = 255
    out = resize_and_crop(frame, 100)
    assert out.min() == 255


def test_same_size_square_frame_is_unchanged():
    frame = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_and_crop(frame, 64), frame)


def test_rejects_nonpositive_size():
    with pytest.raises(ValueError):
        resize_and_crop(np.zeros((10, 10, 3), np.uint8), 0)


def test_out_receives_the_same_pixels_as_the_returned_copy():
    frame = np.random.default_rng(2).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    out = np.zeros((48, 48, 3), np.uint8)
    result = resize_and_crop(frame, 48, out=out)
    assert result is out
    np.testing.assert_array_equal(out, resize_and_crop(frame, 48))


def test_power_of_two_shrink_is_the_box_average_of_the_centre_square():
    # 480x640 -> 120: the centre 480x480 square, each output pixel the mean of a 4x4 block.
    frame = np.random.default_rng(3).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    expected = frame[:, 80:560].reshape(120, 4, 120, 4, 3).astype(np.float64).mean(axis=(1, 3))
    out = resize_and_crop(frame, 120)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


@pytest.mark.parametrize(
    ("h", "w", "size"), [(1080, 1920, 112), (720, 1280, 112), (1080, 1920, 224)]
)
def test_fine_detail_is_averaged_not_aliased(h, w, size):
    # One-pixel black/white checks carry no detail a 112 px crop can show: every output pixel
    # must be the average grey. Point sampling (nearest, or bilinear on a fractional grid)
    # would alias them into black, white or moire.
    checks = ((np.indices((h, w)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = resize_and_crop(np.repeat(checks[..., None], 3, axis=2), size)
    assert np.abs(out.astype(int) - 128).max() <= 2


def test_crop_is_centred_on_the_source_grid():
    # A one-pixel white column at the exact centre of a wide frame stays at the centre of the
    # crop, after a shrink with a fractional factor.
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:, 959:961] = 255
    out = resize_and_crop(frame, 112)
    column = out[56].max(axis=1).astype(int)
    assert np.argmax(column) in (55, 56)
    assert abs(int(column[:56].sum()) - int(column[56:].sum())) <= 8
