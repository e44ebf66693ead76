"""InferenceWorker: gathers clips from the ring, runs the model, posts predictions to the board.

At most one inference is in flight: the worker is one thread that runs the model synchronously.

* Files (``every`` frames apart): the clip ends at frames 0, every, 2*every, ... whatever the
  speed of the machine, so a file gives the same predictions everywhere. The worker waits for
  each such frame; capture waits for the worker through the ring's backpressure.
* Live: after each result the worker takes the clip ending at the *newest* frame, however many
  frames arrived meanwhile, so a slow model lags by one inference, never by a growing queue.

Latency is measured per prediction from the capture of the clip's newest frame to its result.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from stream.contract import ModelContract
from stream.prediction import Prediction
from stream.ring import ClipInfo, FrameRing
from stream.runtime import Runner

_WAIT_S = 0.5


def default_every(fps: float | None) -> int:
    """``--every`` default: about 4 predictions per second of video."""
    return max(1, round((fps or 30.0) / 4.0))


class PredictionBoard:
    """Predictions from the worker to the presenter, in order; shares the ring's condition."""

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

    def take_through(self, index: int) -> list[Prediction]:
        """Remove and return the predictions whose clip ends at or before source frame ``index``."""
        with self.cond:
            taken = []
            while self._queue and self._queue[0].frame_index <= index:
                taken.append(self._queue.popleft())
            return taken


class InferenceWorker(threading.Thread):
    """One thread, one inference at a time; ``every`` None means live (always the newest clip)."""

    def __init__(
        self,
        ring: FrameRing,
        runner: Runner,
        contract: ModelContract,
        board: PredictionBoard,
        stop: threading.Event,
        *,
        every: int | None,
    ) -> None:
        super().__init__(name="epic-worker", daemon=True)
        self.ring = ring
        self.runner = runner
        self.contract = contract
        self.board = board
        self.stop_event = stop
        self.every = every
        self.error: BaseException | None = None
        self.inference_ms_total = 0.0
        # The most recent clips (which frames, what was available), for tests and debugging.
        self.clips: deque[ClipInfo] = deque(maxlen=4096)

    def run(self) -> None:
        try:
            if self.every is None:
                self._live()
            else:
                self._fixed()
        except BaseException as exc:  # handed to the main thread, which re-raises it
            # A stop cancels the run in progress (Runner.cancel); that failure is expected.
            if not self.stop_event.is_set():
                self.error = exc
                self.stop_event.set()
        finally:
            self.ring.release_hold()
            self.board.finish()

    def _fixed(self) -> None:
        seq = 0
        while not self.stop_event.is_set():
            if not self.ring.wait_published(seq, self.stop_event):
                return
            self._infer(seq)
            seq += self.every

    def _live(self) -> None:
        contract, newest = self.contract, -1
        while not self.stop_event.is_set():
            clip = self.ring.gather_newest(
                newest, contract.num_frames, contract.clip_seconds, self.runner.clip[0], self.stop_event
            )
            if clip is None:
                return
            self._run(clip)
            newest = clip.newest.seq

    def _infer(self, seq: int) -> None:
        contract = self.contract
        self._run(self.ring.gather(seq, contract.num_frames, contract.clip_seconds, self.runner.clip[0]))

    def _run(self, clip: ClipInfo) -> None:
        self.clips.append(clip)
        scores, inference_ms = self.runner.timed_run()
        done = time.monotonic()
        self.inference_ms_total += inference_ms
        newest = clip.newest
        self.board.post(
            Prediction(
                frame_index=newest.index,
                time_s=newest.time_s,
                scores=scores,
                latency_ms=(done - newest.captured_s) * 1000.0,
                inference_ms=inference_ms,
            )
        )
