"""Which frames a clip takes: the live span (clip_indices) and the original's segment sampling."""

from __future__ import annotations

import numpy as np
import pytest

from train.data import clip_indices, segment_indices


def test_span_runs_first_to_last_over_span_frames_evenly_oldest_first():
    # 2 s at 60 fps, 8 frames: what epic-stream feeds the model live.
    idx = clip_indices(1, 1000, 8, 2.0 * 60.0)
    assert idx.dtype == np.int64 and idx.shape == (8,)
    assert idx[-1] - idx[0] == 120
    assert np.all(np.diff(idx) > 0)
    expected_offsets = np.floor(np.linspace(0, 120, 8) + 0.5).astype(int)
    np.testing.assert_array_equal(idx - idx[0], expected_offsets)


def test_centred_span_leaves_equal_room_on_both_sides():
    idx = clip_indices(101, 400, 8, 120.0)
    assert abs((idx[0] - 101) - (400 - idx[-1])) <= 1
    idx = clip_indices(100, 400, 8, 120.0)
    assert idx[0] - 100 == 400 - idx[-1]
    assert idx[-1] - idx[0] == 120


def test_centred_is_deterministic():
    a = clip_indices(5, 500, 8, 100.0)
    b = clip_indices(5, 500, 8, 100.0)
    np.testing.assert_array_equal(a, b)


def test_random_position_stays_inside_the_segment_and_reaches_both_ends():
    rng = np.random.default_rng(0)
    start, stop, span = 10, 40, 20.0
    firsts = set()
    for _ in range(500):
        idx = clip_indices(start, stop, 5, span, rng=rng)
        assert idx[0] >= start and idx[-1] <= stop
        assert idx[-1] - idx[0] == 20  # never squeezed: the span is always the full span
        assert np.all(np.diff(idx) > 0)
        firsts.add(int(idx[0]))
    # Every start position from start to stop - span turns up.
    assert firsts == set(range(start, stop - 20 + 1))


def test_segment_shorter_than_span_is_centred_and_clamped_with_repeated_edges():
    start, stop = 10, 20  # 11 frames, span of 30
    centred = clip_indices(start, stop, 8, 30.0)
    assert centred.min() == start and centred.max() == stop
    assert np.all(np.diff(centred) >= 0)
    assert (centred == start).sum() >= 2 and (centred == stop).sum() >= 2
    # The span 0..30 is centred on the segment's middle, 15, then clamped to 10..20.
    np.testing.assert_array_equal(centred, [10, 10, 10, 13, 17, 20, 20, 20])
    # No room to move: training gets the centred clip too.
    rng = np.random.default_rng(1)
    for _ in range(20):
        np.testing.assert_array_equal(clip_indices(start, stop, 8, 30.0, rng=rng), centred)


def test_single_frame_segment_and_single_frame_clip():
    np.testing.assert_array_equal(clip_indices(7, 7, 4, 50.0), [7, 7, 7, 7])
    assert clip_indices(1, 101, 1, 60.0).tolist() == [51]


@pytest.mark.parametrize(
    ("start", "stop", "num_frames", "span"), [(0, 10, 0, 5.0), (10, 9, 4, 5.0), (0, 10, 4, -1.0)]
)
def test_clip_indices_rejects_impossible_requests(start, stop, num_frames, span):
    with pytest.raises(ValueError):
        clip_indices(start, stop, num_frames, span)


def test_segment_sampling_takes_the_middle_of_each_equal_part_in_eval():
    np.testing.assert_array_equal(segment_indices(1, 80, 8), [6, 16, 26, 36, 46, 56, 66, 76])


def test_segment_sampling_takes_one_random_frame_from_each_part_in_train():
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(300):
        idx = segment_indices(1, 80, 8, rng=rng)
        for k, i in enumerate(idx):
            assert 1 + 10 * k <= i < 1 + 10 * (k + 1)
        seen.update(int(i) for i in idx[:1])
    assert seen == set(range(1, 11))


def test_segment_sampling_of_a_segment_shorter_than_the_clip_repeats_frames_in_order():
    idx = segment_indices(4, 6, 8)
    assert idx.min() >= 4 and idx.max() <= 6
    assert np.all(np.diff(idx) >= 0)
    assert set(idx.tolist()) == {4, 5, 6}
