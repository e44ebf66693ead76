"""FrameRing: clips by source time, lossless backpressure, live overwrite, and no torn frames."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stream.ring import FrameRing, Overflow

S = 4  # model-size frames: tiny, the ring does not care


def make_ring(capacity=16, display=4, lossless=False, shape=(6, 8, 3)) -> FrameRing:
    return FrameRing(
        capacity,
        S,
        shape,
        display_capacity=display,
        overflow=Overflow.WAIT if lossless else Overflow.OVERWRITE,
    )


def push(
    ring: FrameRing, value: int, time_s: float, index: int | None = None, stop=None
) -> int | None:
    """Write one frame whose every pixel is ``value`` (model and display copies)."""
    seq = ring.reserve(stop)
    if seq is None:
        return None
    ring.model_slot(seq)[:] = value % 256
    image = ring.display_slot(seq)
    image[:] = value % 256
    ring.publish(seq, image, seq if index is None else index, time_s, 0.0)
    return seq


def clip_values(
    ring: FrameRing, end: int, num_frames: int, clip_seconds
) -> tuple[list[int], tuple]:
    out = np.empty((num_frames, S, S, 3), np.uint8)
    info = ring.gather(end, num_frames, clip_seconds, out)
    assert (out == out[:, :1, :1, :1]).all(), "each gathered frame is one solid value"
    return [int(v) for v in out[:, 0, 0, 0]], info


@pytest.mark.parametrize("fps", [30.0, 50.0, 60.0])
def test_clip_spans_the_same_source_time_at_any_frame_rate(fps):
    ring = make_ring(capacity=128, lossless=False)
    for i in range(100):
        push(ring, i, i / fps)
    values, info = clip_values(ring, 99, 5, 1.0)
    times = [v / fps for v in values]
    # Five frames spread over one second ending at the newest frame, each the nearest to its
    # target instant (within half a frame).
    targets = [99 / fps - 1.0 + 0.25 * k for k in range(5)]
    assert values[-1] == 99
    assert np.allclose(times, targets, atol=0.5 / fps + 1e-9)
    assert info.seqs == tuple(values)
    assert info.newest.index == 99


def test_exact_spacing_when_the_rate_divides_the_span():
    ring = make_ring(capacity=64, lossless=False)
    for i in range(40):
        push(ring, i, i / 30)
    values, _ = clip_values(ring, 30, 8, 0.7)  # 0.1 s = 3 frames apart
    assert values == [9, 12, 15, 18, 21, 24, 27, 30]


def test_clip_before_the_stream_start_repeats_the_first_frame():
    ring = make_ring(capacity=64)
    for i in range(3):
        push(ring, i, i / 30)
    values, _ = clip_values(ring, 2, 4, 1.0)
    assert values == [0, 0, 0, 2]


def test_without_clip_seconds_the_clip_is_consecutive_frames():
    ring = make_ring(capacity=64)
    for i in range(10):
        push(ring, i, i * 0.5)  # whatever the timestamps
    assert clip_values(ring, 9, 4, None)[0] == [6, 7, 8, 9]
    assert clip_values(ring, 1, 4, None)[0] == [0, 0, 0, 1]


def test_nearest_frame_follows_irregular_timestamps():
    ring = make_ring(capacity=64, lossless=False)
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 0.9, 1.0]
    for i, t in enumerate(times):
        push(ring, i, t)
    # Targets 0.0, 0.5, 1.0 -> frames at 0.0, 0.5, 1.0.
    assert clip_values(ring, 6, 3, 1.0)[0] == [0, 3, 6]


def test_gather_writes_into_the_callers_buffer():
    ring = make_ring(capacity=8)
    for i in range(4):
        push(ring, 10 * i, i / 30)
    out = np.zeros((1, 2, S, S, 3), np.uint8)
    ring.gather(3, 2, None, out[0])
    assert out[0, :, 0, 0, 0].tolist() == [20, 30]


def test_lossless_writer_waits_for_the_presenter():
    ring = make_ring(capacity=32, display=4, lossless=True)
    ring.release_hold()  # no worker in this test
    stopped = threading.Event()
    stopped.set()  # reserve() returns None instead of waiting
    for i in range(4):
        assert push(ring, i, i / 30, stop=stopped) == i
    assert push(ring, 4, 4 / 30, stop=stopped) is None  # display slot 0 not presented yet
    frame, skipped = ring.acquire(0)
    assert skipped == 0 and frame.info.seq == 0
    assert push(ring, 4, 4 / 30, stop=stopped) is None  # pinned, still being presented
    ring.release(0)
    assert push(ring, 4, 4 / 30, stop=stopped) == 4


def test_lossless_writer_keeps_the_frames_a_future_clip_needs():
    ring = make_ring(capacity=8, display=32, lossless=True)
    stopped = threading.Event()
    stopped.set()
    for i in range(8):
        push(ring, i, i / 30, stop=stopped)
    clip_values(ring, 7, 4, None)  # the worker's hold is now frame 4
    for seq in range(8):
        ring.release(seq)
    for i in range(8, 12):  # overwrite frames 0..3: no clip needs them any more
        assert push(ring, i, i / 30, stop=stopped) == i
    assert push(ring, 12, 12 / 30, stop=stopped) is None  # would replace frame 4


def test_a_ring_too_small_for_the_clip_does_not_deadlock():
    ring = make_ring(capacity=4, display=32, lossless=True)
    stopped = threading.Event()
    stopped.set()
    for i in range(4):
        push(ring, i, i / 30, stop=stopped)
    clip_values(ring, 0, 2, None)  # hold frame 0
    assert push(ring, 4, 4 / 30, stop=stopped) is None
    # The worker now waits for frame 5, which cannot come without replacing frame 0.
    waiter = threading.Thread(target=ring.wait_published, args=(5,))
    waiter.start()
    writer_stop = threading.Event()
    for i in (4, 5):
        assert push(ring, i, i / 30, stop=writer_stop) == i
    waiter.join(10)
    assert not waiter.is_alive()
    assert clip_values(ring, 5, 2, None)[0] == [4, 5]


def test_a_long_prediction_interval_evicts_only_frames_no_clip_needs(caplog):
    """Lossless, --every 10 with a 2-frame clip and an 8-slot ring: the writer must pass the hold
    to reach frame 10, and the clip ending there must still be exact."""
    ring = make_ring(capacity=8, display=64, lossless=True)
    push(ring, 0, 0.0)
    assert clip_values(ring, 0, 2, None)[0] == [0, 0]  # hold: frame 0
    seen = []

    def worker():
        if ring.wait_published(10):
            seen.append(clip_values(ring, 10, 3, 2 / 30)[0])

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(1, 11):
        assert push(ring, i, i / 30) == i
    thread.join(10)
    assert seen == [[8, 9, 10]]
    assert "too small" not in caplog.text


def test_a_clip_longer_than_the_ring_is_shortened_with_a_warning(caplog):
    ring = make_ring(capacity=8, display=4, lossless=False)
    for i in range(20):
        push(ring, i, i / 30)
    values, _ = clip_values(ring, 19, 4, 1.0)  # 1 s is 30 frames; the ring holds 8
    assert values[-1] == 19 and min(values) >= 12
    assert "too small for the model's clip" in caplog.text


def test_live_writer_overwrites_and_the_presenter_skips_what_it_missed():
    ring = make_ring(capacity=16, display=4, lossless=False)
    for i in range(10):
        assert push(ring, i, i / 30) == i
    frame, skipped = ring.acquire(0)
    # Frames 0..5 were overwritten in the 4-slot display ring: the oldest left is 6.
    assert frame.info.seq == 6 and skipped == 6
    assert int(frame.image[0, 0, 0]) == 6


def test_live_writer_drops_a_frame_whose_display_slot_is_pinned():
    ring = make_ring(capacity=16, display=4, lossless=False)
    for i in range(4):
        push(ring, i, i / 30)
    frame, _ = ring.acquire(0)
    assert ring.reserve() is None  # slot 0 is being presented: drop rather than wait or tear
    assert int(frame.image[0, 0, 0]) == 0
    ring.release(0)
    assert push(ring, 4, 4 / 30) == 4


def test_frames_that_change_size_are_adopted():
    ring = make_ring(capacity=8, display=2, lossless=False, shape=(6, 8, 3))
    seq = ring.reserve()
    big = np.full((12, 20, 3), 7, np.uint8)
    ring.publish(seq, big, 0, 0.0, 0.0)
    frame, _ = ring.acquire(0)
    assert frame.image is big


def test_close_ends_every_wait():
    ring = make_ring()
    push(ring, 0, 0.0)
    ring.close()
    assert ring.wait_published(1) is False
    assert ring.wait_newer(0) is None
    assert ring.acquire(0)[0] is not None
    ring.release(0)
    assert ring.acquire(1) == (None, 0)


@pytest.mark.parametrize("lossless", [True, False])
def test_no_torn_frames_under_concurrency(lossless):
    """Real threads: a writer floods the ring while a clip reader and a presenter read it.

    Every frame is filled with its own value; a reader that ever sees a mixed or wrong frame
    caught a slot being overwritten under it.
    """
    total = 3000
    ring = make_ring(capacity=12, display=4, lossless=lossless, shape=(32, 32, 3))
    stop = threading.Event()
    problems: list[str] = []
    presented: list[int] = []

    def writer():
        for i in range(total):
            seq = ring.reserve(stop)
            if seq is None:
                if not lossless:
                    continue
                return
            ring.model_slot(seq)[:] = seq % 251
            image = ring.display_slot(seq)
            image[:] = seq % 251
            ring.publish(seq, image, i, seq / 30.0, 0.0)
        ring.close()

    def clip_reader():
        out = np.empty((3, S, S, 3), np.uint8)
        newest = -1
        while True:
            seq = ring.wait_newer(newest) if not lossless else (newest + 1)
            if lossless and not ring.wait_published(seq):
                break
            if seq is None:
                break
            info = ring.gather(seq, 3, 0.1, out)
            for value, chosen in zip(out[:, 0, 0, 0], info.seqs, strict=True):
                if int(value) != chosen % 251 or not (out == out[:, :1, :1, :1]).all():
                    problems.append(f"clip ending {seq}: frame {chosen} read as {value}")
            newest = seq
        ring.release_hold()

    threads = [threading.Thread(target=writer), threading.Thread(target=clip_reader)]
    for thread in threads:
        thread.start()
    seq = 0
    while True:
        frame, _ = ring.acquire(seq)
        if frame is None:
            break
        expected = frame.info.seq % 251
        if not (frame.image == expected).all():
            problems.append(f"display frame {frame.info.seq} torn")
        frame.image[:2] = 255 - expected  # the presenter draws on it in place
        if not (frame.image[2:] == expected).all():
            problems.append(f"display frame {frame.info.seq} changed while pinned")
        presented.append(frame.info.seq)
        ring.release(frame.info.seq)
        seq = frame.info.seq + 1
    for thread in threads:
        thread.join(30)
    assert not problems, problems[:5]
    assert presented == sorted(presented)
    if lossless:
        assert presented == list(range(total))
