"""InferenceScheduler: the one thread that owns the model session, shared by every stream.

Each stream registers a :class:`Lane`: its ring, its prediction board and its :class:`ClipPolicy`.

* ``FIXED`` (files): clips end at frames 0, every, 2*every, ... whatever the speed of the
  machine, so a file gives the same predictions everywhere, alone or beside other streams. The
  lane is ready when its next such frame is published; capture waits for the scheduler through
  the ring's backpressure.
* ``NEWEST`` (cameras, URLs, ``--realtime``): the lane is ready whenever a frame newer than its
  last clip is published, and the clip ends at the newest frame at the moment it is gathered, so
  a slow model lags by one inference, never by a growing queue.

A batch goes when it is full or its wait runs out (DeepStream's nvstreammux push timeout): once
one lane is ready, the scheduler waits at most ``batch_wait_s`` for as many lanes as the batch
holds, then gathers one clip per ready lane into the runner's buffer, makes one ``session.run``
and routes each row's scores back to its lane's board. Lanes are served round-robin from the one
after the last served, so no stream starves when more are ready than a batch holds. A lane that
is not ready (a stalled camera, an I-frame pause, a reconnect) never holds a batch beyond the
wait: the others go without it.

A runner on a server (:class:`~stream.triton_client.TritonRunner`) may lose it: its run raises
:class:`~stream.errors.InferenceUnavailable`. That is an outage, not an error: the scheduler keeps
the batch, waits (0.5 s, 1, 2, ... at most ``BACKOFF_MAX_S``) and tries again, and tells every lane
when the server is lost and when it is back (a :class:`ServerEvent`, which the channels write to the
events and show). Meanwhile capture, recording and the view go on. A ``FIXED`` lane's clip stays in
the retried batch, and its capture waits through the ring's backpressure, so a file gives the same
predictions with or without an outage; a ``NEWEST`` lane takes its newest clip again at each retry,
skipping the clips of the outage as it always skips what the model had no time for.

Nothing here polls: captures ring the scheduler's doorbell when they publish or close, and a
stop rings it too. Latency is measured per prediction, from the capture of the clip's newest
frame to the result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from stream.contract import ModelContract
from stream.errors import InferenceUnavailable, ModelError
from stream.prediction import Prediction
from stream.ring import ClipInfo, FrameRing
from stream.runtime import Runner
from stream.signals import Stopper

log = logging.getLogger(__name__)

_WAIT_S = 0.5  # a safety net under the doorbell, not a polling interval
DEFAULT_BATCH_WAIT_MS = 5.0
BACKOFF_START_S = 0.5  # the first retry after an outage begins; doubled each time
BACKOFF_MAX_S = 8.0


def default_every(fps: float | None) -> int:
    """``--every`` default: about 4 predictions per second of video."""
    return max(1, round((fps or 30.0) / 4.0))


class ClipPolicy(Enum):
    """Which clip a stream's next prediction is on."""

    FIXED = "fixed"  # files: the clip ending at every ``every``-th frame, none skipped
    NEWEST = "newest"  # live: the clip ending at the newest frame, whenever there is a new one


@dataclass(frozen=True)
class ServerEvent:
    """The inference server was lost or is back; handed to every lane's ``on_server``."""

    lost: bool
    detail: str  # lost: why (the client's first line); restored: how long it was out
    outages: int  # outages so far, this one included


class LaneState(Enum):
    READY = "ready"
    WAITING = "waiting"
    DONE = "done"  # the source ended and every clip it owes has been run


class PredictionBoard:
    """Predictions from the scheduler to one stream's presenter, in order; shares the ring's condition."""

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self._queue: deque[Prediction] = deque()
        self._done_through = -1  # source index of the newest clip end with a result
        self._finished = False
        self.count = 0

    def post(self, prediction: Prediction) -> None:
        with self.cond:
            self._queue.append(prediction)
            self._done_through = prediction.frame_index
            self.count += 1
            self.cond.notify_all()

    def finish(self) -> None:
        """No more predictions will come."""
        with self.cond:
            self._finished = True
            self.cond.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    def wait_through(self, index: int, stop: threading.Event | None = None) -> None:
        """Wait until the prediction for the clip ending at ``index`` is posted (or none will be)."""
        with self.cond:
            while self._done_through < index and not self._finished:
                if stop is not None and stop.is_set():
                    return
                self.cond.wait(_WAIT_S)

    def wait_finished(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Wait until no more predictions will come (the last one in flight is in); False if
        ``timeout_s`` passed or ``stop`` was set first."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not self._finished:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self.cond.wait(min(left, _WAIT_S))
            return True

    def take_through(self, index: int) -> list[Prediction]:
        """Remove and return the predictions whose clip ends at or before source frame ``index``."""
        with self.cond:
            taken = []
            while self._queue and self._queue[0].frame_index <= index:
                taken.append(self._queue.popleft())
            return taken

    def take_all(self) -> list[Prediction]:
        with self.cond:
            taken, self._queue = list(self._queue), deque()
            return taken


class Lane:
    """One stream as the scheduler sees it: where its next clip ends, and where results go."""

    def __init__(
        self,
        name: str,
        ring: FrameRing,
        board: PredictionBoard,
        policy: ClipPolicy,
        *,
        every: int | None = None,
        max_rate: float | None = None,
        trace_clips: bool = False,
        on_server: Callable[[ServerEvent], None] | None = None,
    ) -> None:
        if policy is ClipPolicy.FIXED and not every:
            raise ValueError("a FIXED lane needs every >= 1")
        if max_rate is not None and not max_rate > 0:
            raise ValueError(f"max_rate must be positive, got {max_rate}")
        self.name = name
        self.ring = ring
        self.board = board
        self.policy = policy
        self.every = every
        self._due = 0  # FIXED: the frame the next clip ends at
        self._last = -1  # NEWEST: the newest frame of the last clip
        # NEWEST: at most max_rate clips a second (--max-rate): a CPU box need not re-predict
        # the same second of video as fast as it can.
        self._interval_s = 0.0 if max_rate is None or policy is ClipPolicy.FIXED else 1.0 / max_rate
        self.next_allowed = 0.0  # time.monotonic() before which the next clip may not be taken
        self.done = False
        # Outages of a remote runner (None: local inference, which cannot be lost); written by the
        # scheduler thread, read by the presenter.
        self.outages: int | None = None
        self.server_lost = False
        self.on_server = on_server  # called on the scheduler thread
        # The clips run for this lane (which frames, what was available), for tests and
        # debugging only: a deque per prediction has no place in a run that lasts weeks.
        self.clips: deque[ClipInfo] | None = deque(maxlen=4096) if trace_clips else None
        if policy is ClipPolicy.FIXED:
            ring.expect(0)

    def poll(self) -> LaneState:
        if self.done:
            return LaneState.DONE
        if self._interval_s and time.monotonic() < self.next_allowed:
            # Rate-capped; if the source has ended meanwhile, its last clip is still owed.
            return LaneState.WAITING
        if self.policy is ClipPolicy.FIXED:
            ready = self.ring.ready_through(self._due)
        else:
            ready = self.ring.newest_after(self._last)
        if ready is None:
            return LaneState.DONE
        return LaneState.READY if ready is not False else LaneState.WAITING

    def gather(self, out, num_frames: int, clip_seconds: float | None) -> ClipInfo:
        ring = self.ring
        if self.policy is ClipPolicy.FIXED:
            clip = ring.gather(self._due, num_frames, clip_seconds, out)
            self._due += self.every
            ring.expect(self._due)
        else:
            with ring.cond:  # the newest frame now, and no newer one slips in before the gather
                clip = ring.gather(ring.head - 1, num_frames, clip_seconds, out)
            self._last = clip.newest.seq
            if self._interval_s:
                self.next_allowed = time.monotonic() + self._interval_s
        if self.clips is not None:
            self.clips.append(clip)
        return clip

    def server_event(self, event: ServerEvent) -> None:
        self.server_lost = event.lost
        self.outages = event.outages
        if self.on_server is not None:
            self.on_server(event)

    def finish(self) -> None:
        """No more clips for this lane: free the ring's hold and tell the presenter."""
        self.done = True
        self.ring.expect(None)
        self.ring.release_hold()
        self.board.finish()


class InferenceScheduler(threading.Thread):
    """One thread, one session, one batch in flight; see the module docstring."""

    def __init__(
        self,
        runner: Runner,
        contract: ModelContract,
        stopper: Stopper,
        *,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000.0,
    ) -> None:
        super().__init__(name="epic-scheduler", daemon=True)
        self.runner = runner
        self.contract = contract
        self.stopper = stopper
        self.max_batch = runner.max_batch
        self.batch_wait_s = max(0.0, batch_wait_s)
        self.lanes: list[Lane] = []
        self.error: BaseException | None = None
        self.inference_ms_total = 0.0
        self.batches = 0
        self.clips_run = 0
        self.outages = 0
        self._lost_since: float | None = None  # monotonic start of the outage in progress
        self._doorbell = threading.Condition(threading.Lock())
        self._rings = 0  # how often the doorbell rang: a wake-up is never lost between checks
        self._next = 0  # round-robin: the lane the next batch starts looking at
        stopper.on_stop(self.ring)

    def add(self, lane: Lane) -> None:
        """Register a lane (before :meth:`start`)."""
        if getattr(self.runner, "remote", False):
            lane.outages = 0
        self.lanes.append(lane)

    def ring(self) -> None:
        """Something changed (a frame, a closed source, a stop): look again."""
        with self._doorbell:
            self._rings += 1
            self._doorbell.notify()

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # handed to the main thread, which re-raises it
            # A stop cancels the run in progress (Runner.cancel); that failure is expected.
            if not self.stopper.is_set():
                self.error = exc
                self.stopper.stop(f"error: {type(exc).__name__}")
        finally:
            for lane in self.lanes:
                if not lane.done:
                    lane.finish()

    # -- the loop --------------------------------------------------------------------------------

    def _collect(self) -> tuple[list[Lane], int]:
        """The ready lanes in round-robin order, and how many lanes are still open; finishes the
        lanes that are done."""
        ready, open_lanes = [], 0
        count = len(self.lanes)
        for k in range(count):
            lane = self.lanes[(self._next + k) % count]
            if lane.done:
                continue
            state = lane.poll()
            if state is LaneState.DONE:
                lane.finish()
                continue
            open_lanes += 1
            if state is LaneState.READY:
                ready.append(lane)
        return ready, open_lanes

    def _wait(self, seen: int, timeout_s: float) -> int:
        """Wait for the doorbell to ring after ``seen`` rings (or the timeout); return the count."""
        with self._doorbell:
            if self._rings == seen and timeout_s > 0:
                self._doorbell.wait(timeout_s)
            return self._rings

    def _loop(self) -> None:
        stop = self.stopper
        while not stop.is_set():
            seen = self._rings
            ready, open_lanes = self._collect()
            if open_lanes == 0:
                return
            if not ready:
                self._wait(seen, self._idle_wait())
                continue
            target = min(self.max_batch, open_lanes)
            if len(ready) < target and self.batch_wait_s > 0:
                deadline = time.monotonic() + self.batch_wait_s
                while len(ready) < target and not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    seen = self._wait(seen, left)
                    ready, open_lanes = self._collect()
                    target = min(self.max_batch, open_lanes)
                if stop.is_set() or not ready:
                    continue
            self._run_batch(ready[: self.max_batch])

    def _idle_wait(self) -> float:
        """How long to sleep when no lane is ready: until the doorbell, or until a rate-capped
        lane may go again (nothing rings for that)."""
        now = time.monotonic()
        due = [
            lane.next_allowed - now
            for lane in self.lanes
            if not lane.done and lane.next_allowed > now
        ]
        return min([_WAIT_S, *due])

    def _run_batch(self, batch: list[Lane]) -> None:
        contract, runner = self.contract, self.runner
        clips = [
            lane.gather(runner.clip[row], contract.num_frames, contract.clip_seconds)
            for row, lane in enumerate(batch)
        ]
        try:
            scores, inference_ms = self._run_until_served(batch, clips)
        except Exception as exc:
            if self.stopper.is_set():
                raise  # cancelled by the stop: not the model's fault
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = ", ".join(
                f"{lane.name} frame {clip.newest.index}"
                for lane, clip in zip(batch, clips, strict=True)
            )
            raise ModelError(
                f"{contract.path} failed while streaming (clips ending at {where}): {first}"
            ) from exc
        if scores is None:
            return  # stopped during an outage
        done = time.monotonic()
        self.inference_ms_total += inference_ms
        self.batches += 1
        self.clips_run += len(batch)
        for row, (lane, clip) in enumerate(zip(batch, clips, strict=True)):
            newest = clip.newest
            lane.board.post(
                Prediction(
                    frame_index=newest.index,
                    time_s=newest.time_s,
                    scores=scores[row],
                    latency_ms=(done - newest.captured_s) * 1000.0,
                    inference_ms=inference_ms,
                    warmup=clip.padded,
                )
            )
        # Round-robin: the next batch starts after the last lane this one served.
        self._next = (self.lanes.index(batch[-1]) + 1) % len(self.lanes)

    # -- outages ---------------------------------------------------------------------------------

    def _run_until_served(self, batch: list[Lane], clips: list[ClipInfo]):
        """``runner.timed_run`` on the batch, retried with backoff while inference is unavailable;
        ``(None, 0.0)`` if the run stops first. ``clips`` is updated for live lanes' new clips."""
        runner, contract = self.runner, self.contract
        delay = BACKOFF_START_S
        while True:
            try:
                result = runner.timed_run(len(batch))
            except InferenceUnavailable as exc:
                if self.stopper.is_set():
                    return None, 0.0
                self._lost(str(exc))
                if self.stopper.event.wait(delay):
                    return None, 0.0
                delay = min(2.0 * delay, BACKOFF_MAX_S)
                # Live lanes are retried on their newest clip; file lanes keep theirs.
                for row, lane in enumerate(batch):
                    if lane.policy is ClipPolicy.NEWEST:
                        clips[row] = lane.gather(
                            runner.clip[row], contract.num_frames, contract.clip_seconds
                        )
                continue
            if self._lost_since is not None:
                self._restored()
            return result

    def _lost(self, detail: str) -> None:
        if self._lost_since is not None:
            return
        self._lost_since = time.monotonic()
        self.outages += 1
        log.warning(
            "inference server lost (%s); predictions pause and resume when it is back", detail
        )
        self._tell(ServerEvent(lost=True, detail=detail, outages=self.outages))

    def _restored(self) -> None:
        out_s = time.monotonic() - self._lost_since
        self._lost_since = None
        log.warning("inference server back after %.1f s; predictions resume", out_s)
        self._tell(
            ServerEvent(lost=False, detail=f"back after {out_s:.1f} s", outages=self.outages)
        )

    def _tell(self, event: ServerEvent) -> None:
        for lane in self.lanes:
            lane.server_event(event)
