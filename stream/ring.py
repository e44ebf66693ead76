"""FrameRing: the fixed, preallocated buffer between the capture thread, the worker and the presenter.

Every frame gets a *sequence number* (0, 1, 2, ... in the order it was published) and lives in
slot ``seq % capacity``. Two rings share those numbers:

* the model ring (``capacity`` slots) holds each frame already resized to the model's input
  size, with its source index, source time and capture time; the worker gathers clips from it;
* the display ring (``display_capacity`` slots, fewer: full-size frames are big) holds the frame
  as decoded, for the presenter to annotate, show and record.

Nothing is copied per clip frame: a clip is one ``np.take`` into the worker's input buffer, and
the capture thread decodes straight into a display slot.

Who may overwrite what (the slot of sequence ``s`` last held ``s - capacity``):

* a slot being written is marked invalid (its sequence number is -1) under the lock before the
  writer touches it, and readers only read slots whose number is the one they want;
* the worker gathers under the lock, so the frames it reads cannot be reserved meanwhile;
* the presenter *pins* the frame it is presenting, because drawing and encoding it takes long;
* with :attr:`Overflow.WAIT` (files) the writer waits instead of overwriting a frame that the
  presenter has not presented yet, or one that a future clip may still need (the scheduler's
  *hold*: the oldest frame of its last clip; later clips never reach further back), unless the
  scheduler expects that very frame next. With :attr:`Overflow.OVERWRITE` (live) it never waits:
  the oldest frames are overwritten, and a frame whose display slot is pinned is dropped.

All state changes notify one condition, shared with the stream's prediction board, so that every
wait of a stream is a condition wait that a stop wakes at once: nothing polls. The shared
scheduler is told of new frames through ``on_publish`` (its doorbell), never by waiting here.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

log = logging.getLogger(__name__)

# Waits re-check their predicate at least this often: a safety net, not a polling interval.
_WAIT_S = 0.5
_NEVER = math.inf


class Overflow(Enum):
    """What the writer does when the next slot still holds a frame somebody needs."""

    WAIT = "wait"  # files: backpressure, nothing is lost, runs are deterministic
    OVERWRITE = "overwrite"  # live: never wait; the oldest frames go, a pinned one is dropped


@dataclass(frozen=True)
class FrameInfo:
    """Where a frame came from: its ring sequence, source index, source time and capture time."""

    seq: int
    index: int  # 0-based index in the source (frames dropped at capture still count)
    time_s: float  # source time
    captured_s: float  # time.monotonic() when it was read


@dataclass(frozen=True)
class ClipInfo:
    """What a gathered clip holds: its frames' sequence numbers (oldest first) and its newest frame."""

    seqs: tuple[int, ...]
    newest: FrameInfo
    available: int  # the newest frame published when the clip was gathered
    # Warm-up: the stream has not yet covered the model's clip span, so the clip's oldest frames
    # are copies of the stream's first frame.
    padded: bool = False

    @property
    def first_seq(self) -> int:
        return self.seqs[0]


@dataclass(frozen=True)
class DisplayFrame:
    """A pinned full-size frame; ``image`` is the ring's own array until :meth:`FrameRing.release`."""

    info: FrameInfo
    image: np.ndarray


class FrameRing:
    """Fixed-capacity frame store shared by one writer (capture), the worker and the presenter."""

    def __init__(
        self,
        capacity: int,
        image_size: int,
        frame_shape: tuple[int, int, int],
        *,
        display_capacity: int,
        overflow: Overflow,
        cond: threading.Condition | None = None,  # must wrap an RLock
        on_publish: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 2 or display_capacity < 2:
            raise ValueError("a FrameRing needs at least 2 slots in each ring")
        self.capacity = capacity
        self.display_capacity = display_capacity
        self.overflow = overflow
        self.lossless = overflow is Overflow.WAIT
        # Called (lock not held) after every publish and at close: the shared scheduler's doorbell.
        self._on_publish = on_publish
        # Reentrant: gather_newest waits and gathers under one hold of the lock.
        self.cond = cond or threading.Condition(threading.RLock())
        self._model = np.zeros((capacity, image_size, image_size, 3), np.uint8)
        self._model_seq = np.full(capacity, -1, np.int64)
        self._index = np.zeros(capacity, np.int64)
        self._time = np.zeros(capacity, np.float64)
        self._captured = np.zeros(capacity, np.float64)
        # Full-size frames are preallocated at the source's size; a slot whose frame changes size
        # adopts the decoder's new array instead (issue: frames that change size mid-stream).
        self._display = [np.zeros(frame_shape, np.uint8) for _ in range(display_capacity)]
        self._display_seq = np.full(display_capacity, -1, np.int64)
        self._display_info: list[FrameInfo | None] = [None] * display_capacity
        self._head = 0  # next sequence number to publish
        self._reserved: int | None = None
        self._closed = False
        self._hold: float = 0  # lossless: the oldest frame a future clip may need
        self._waiting_for: int | None = None  # lossless: the frame the scheduler expects next
        self._presented = 0  # every frame before this one has been presented (lossless)
        self._pinned: int | None = None
        self._warned_short = False

    # -- state -----------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """How many frames have been published."""
        return self._head

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more frames will come: wake every waiter."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        if self._on_publish is not None:
            self._on_publish()

    def _wait(self, ready, stop: threading.Event | None) -> bool:
        """Wait (lock held) until ``ready()``; False if ``stop`` was set first."""
        while not ready():
            if stop is not None and stop.is_set():
                return False
            self.cond.wait(_WAIT_S)
        return True

    # -- writer (capture thread) -----------------------------------------------------------------

    def _writable(self, seq: int) -> bool:
        if self._closed:
            return True  # nobody will read any more; let the writer finish without waiting
        if seq - self.display_capacity >= self._presented:
            return False  # its display slot still holds a frame not yet presented
        if seq - self.capacity >= self._hold:
            # The hold is conservative: it protects every frame from the oldest of the last clip
            # on. When the worker waits for a frame that cannot be written without replacing a
            # held one (a long --every), the oldest frames go: the next clip ends at that frame
            # and needs only the newest ``clip span`` of them, which a ring larger than the span
            # keeps. Waiting here would deadlock.
            return self._waiting_for is not None and self._waiting_for >= seq
        return True

    def reserve(self, stop: threading.Event | None = None) -> int | None:
        """Claim the next slot for writing and return its sequence number.

        Lossless: waits until the slot is free (None if ``stop`` is set). Live: never waits;
        returns None when the presenter has that display slot pinned, and the frame is dropped.
        Calling it again before :meth:`publish` returns the same sequence number.
        """
        with self.cond:
            seq = self._head
            if self.lossless:
                if not self._wait(lambda: self._writable(seq), stop):
                    return None
            elif (
                self._pinned is not None
                and self._pinned % self.display_capacity == (seq % self.display_capacity)
                and self._pinned != seq
            ):
                return None
            self._model_seq[seq % self.capacity] = -1
            self._display_seq[seq % self.display_capacity] = -1
            self._reserved = seq
            return seq

    def model_slot(self, seq: int) -> np.ndarray:
        """The model-size array to write frame ``seq`` into (reserved by the caller)."""
        return self._model[seq % self.capacity]

    def display_slot(self, seq: int) -> np.ndarray:
        """The full-size array frame ``seq`` may be decoded into (reserved by the caller)."""
        return self._display[seq % self.display_capacity]

    def publish(
        self, seq: int, image: np.ndarray, index: int, time_s: float, captured_s: float
    ) -> None:
        """Make reserved frame ``seq`` readable. ``image`` is its full-size frame: the display
        slot itself when it was decoded in place, otherwise adopted without a copy."""
        if seq != self._reserved:
            raise RuntimeError(f"publish({seq}) without reserve (reserved: {self._reserved})")
        info = FrameInfo(seq, int(index), float(time_s), float(captured_s))
        with self.cond:
            slot, dslot = seq % self.capacity, seq % self.display_capacity
            self._display[dslot] = image
            self._display_info[dslot] = info
            self._index[slot] = info.index
            self._time[slot] = info.time_s
            self._captured[slot] = info.captured_s
            self._model_seq[slot] = seq
            self._display_seq[dslot] = seq
            self._head = seq + 1
            self._reserved = None
            self.cond.notify_all()
        if self._on_publish is not None:
            self._on_publish()

    # -- worker ----------------------------------------------------------------------------------

    def expect(self, seq: int | None) -> None:
        """The scheduler's next clip ends at frame ``seq`` (None: it needs no more). The writer may
        then evict held frames to reach it (see :meth:`_writable`), so a long ``--every`` cannot
        deadlock a scheduler that does not block here."""
        with self.cond:
            self._waiting_for = seq
            self.cond.notify_all()

    def ready_through(self, seq: int) -> bool | None:
        """True when frame ``seq`` is published, None when it never will be (closed), else False."""
        with self.cond:
            if self._head > seq:
                return True
            return None if self._closed else False

    def newest_after(self, than: int) -> int | bool | None:
        """The newest frame if it is newer than ``than``; False if none is yet, None if none will be."""
        with self.cond:
            if self._head - 1 > than:
                return self._head - 1
            return None if self._closed else False

    def wait_published(self, seq: int, stop: threading.Event | None = None) -> bool:
        """Wait until frame ``seq`` is published; False if the stream ended before it (or stop)."""
        with self.cond:
            self._waiting_for = seq
            self.cond.notify_all()  # the writer may be waiting on the hold: see _writable
            try:
                ok = self._wait(lambda: self._head > seq or self._closed, stop)
                return ok and self._head > seq
            finally:
                self._waiting_for = None

    def wait_newer(self, than: int, stop: threading.Event | None = None) -> int | None:
        """Wait until a frame newer than ``than`` is published; return the newest (None: ended)."""
        with self.cond:
            ok = self._wait(lambda: self._head - 1 > than or self._closed, stop)
            return self._head - 1 if ok and self._head - 1 > than else None

    def gather_newest(
        self,
        than: int,
        num_frames: int,
        clip_seconds: float | None,
        out: np.ndarray,
        stop: threading.Event | None = None,
    ) -> ClipInfo | None:
        """Live: wait for a frame newer than ``than``, then gather the clip ending at the newest
        frame at that moment (one lock hold, so no newer frame can slip in between)."""
        with self.cond:
            seq = self.wait_newer(than, stop)
            return None if seq is None else self.gather(seq, num_frames, clip_seconds, out)

    def gather(
        self, end_seq: int, num_frames: int, clip_seconds: float | None, out: np.ndarray
    ) -> ClipInfo:
        """Copy the clip that ends at frame ``end_seq`` into ``out`` (T x S x S x 3) in one gather.

        With ``clip_seconds``, the T frames are the ones nearest in *source time* to T instants
        spaced evenly over ``clip_seconds`` and ending at ``end_seq``'s time, so sources of any
        frame rate see the same span; before the start of the stream the first frame stands in.
        Without it, the T consecutive frames ending at ``end_seq``.
        """
        with self.cond:
            lo = max(0, end_seq - self.capacity + 1)
            seqs = np.arange(lo, end_seq + 1)
            slots = seqs % self.capacity
            valid = self._model_seq[slots] == seqs
            if not valid[-1]:
                raise RuntimeError(f"frame {end_seq} is not in the ring")
            # The valid frames are the newest contiguous run (older ones were overwritten).
            invalid = np.flatnonzero(~valid)
            if invalid.size:
                seqs, slots = seqs[invalid[-1] + 1 :], slots[invalid[-1] + 1 :]
            count = seqs.size
            if clip_seconds is None or num_frames == 1:
                chosen = np.clip(np.arange(count - num_frames, count), 0, None)
                short = count < num_frames
            else:
                times = self._time[slots]
                targets = times[-1] - clip_seconds * np.linspace(1.0, 0.0, num_frames)
                interval = (times[-1] - times[0]) / max(1, count - 1)
                short = targets[0] < times[0] - interval
                right = np.clip(np.searchsorted(times, targets), 0, count - 1)
                left = np.clip(right - 1, 0, count - 1)
                # Nearest frame in time; a tie goes to the earlier one, which keeps the choice
                # monotonic in the target (so a later clip never needs an earlier frame).
                closer_right = (times[right] - targets) < (targets - times[left])
                chosen = np.where(closer_right, right, left)
            if short and seqs[0] > 0 and not self._warned_short:
                # Older frames existed but were overwritten: the source runs faster than the
                # ring was sized for.
                self._warned_short = True
                log.warning(
                    "the frame buffer (%d frames) is too small for the model's clip at this "
                    "frame rate; clips are shortened to the frames it still holds",
                    self.capacity,
                )
            # mode="clip" avoids the buffered copy that np.take makes for out= with mode="raise".
            np.take(self._model, slots[chosen], axis=0, out=out, mode="clip")
            newest_slot = slots[-1]
            newest = FrameInfo(
                end_seq,
                int(self._index[newest_slot]),
                float(self._time[newest_slot]),
                float(self._captured[newest_slot]),
            )
            chosen_seqs = tuple(int(s) for s in seqs[chosen])
            if self.lossless:
                self._hold = chosen_seqs[0]
                self.cond.notify_all()
            # Short because the stream is young (its first frame is still here), not because the
            # ring lost older frames: the first frame stands in for the time before it.
            padded = bool(short and seqs[0] == 0)
            return ClipInfo(chosen_seqs, newest, self._head - 1, padded)

    def release_hold(self) -> None:
        """The worker needs no more frames (it finished or failed)."""
        with self.cond:
            self._hold = _NEVER
            self.cond.notify_all()

    # -- presenter -------------------------------------------------------------------------------

    def acquire(
        self, seq: int, stop: threading.Event | None = None
    ) -> tuple[DisplayFrame | None, int]:
        """Pin the first presentable frame at or after ``seq``, waiting for it to be published.

        Returns the frame (None when the stream has ended or ``stop`` is set) and how many
        frames from ``seq`` on were skipped because they had already been overwritten (live).
        """
        start = seq
        with self.cond:
            while True:
                if not self._wait(lambda seq=seq: self._head > seq or self._closed, stop):
                    return None, seq - start
                if self._head <= seq:  # closed, and everything was presented
                    return None, seq - start
                dslot = seq % self.display_capacity
                if self._display_seq[dslot] == seq:
                    self._pinned = seq
                    info = self._display_info[dslot]
                    return DisplayFrame(info, self._display[dslot]), seq - start
                # Overwritten (live): jump to the oldest frame that can still be in the ring.
                seq = max(seq + 1, self._head - self.display_capacity)

    def release(self, seq: int) -> None:
        """The presenter is done with frame ``seq`` (and every frame before it)."""
        with self.cond:
            if self._pinned == seq:
                self._pinned = None
            self._presented = max(self._presented, seq + 1)
            self.cond.notify_all()
