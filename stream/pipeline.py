"""StreamPipeline: capture thread -> ring -> inference worker -> presenter (the main thread).

The presenter runs in the calling thread because OpenCV's GUI must. For each frame, in order, it
applies the predictions whose clip ends at or before that frame (smoothing them), draws the
overlay, writes the recording and the events, shows the window and updates the console. In file
mode it first waits for the prediction due at that frame, so every recorded frame carries the
smoothed label of the latest prediction whose clip ends at or before it, on any machine.

Every exit (end of stream, q/Esc, Ctrl-C, SIGTERM, an error in any thread) goes through one
``finally`` that stops the threads, finalizes the recording, writes the events summary and prints
it. Errors raised in the capture or worker threads are re-raised here, in the main thread.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console

from stream.capture import CaptureMode, CaptureThread
from stream.console import LiveConsole, StreamStats, print_summary
from stream.errors import OptionError
from stream.events import EventLog
from stream.events import check_writable as check_events_path
from stream.overlay import OverlayState, draw_overlay
from stream.prediction import Label, Prediction
from stream.recorder import VideoRecorder, check_record_path
from stream.ring import FrameRing
from stream.runtime import Device, Runner, create_session
from stream.smoothing import SmoothingPolicy, make_smoother
from stream.source import DEFAULT_RECONNECTS, DEFAULT_TIMEOUT_S, VideoSource, open_source
from stream.worker import InferenceWorker, PredictionBoard, default_every

log = logging.getLogger(__name__)

STALE_AFTER_S = 1.0  # live: a result whose clip ended this long before the frame is stale
JOIN_TIMEOUT_S = 2.0
WINDOW_TITLE = "epic-stream"
MAX_RING_SLOTS = 4096  # model-size frames: 600 MB at 224 px; only an absurd clip_seconds gets here
LIVE_DISPLAY_SLOTS = 8  # how far the presenter may lag a live source before frames drop
DISPLAY_BUDGET_BYTES = 512 * 1024 * 1024  # full-size frames held for a file's presenter
LIVE_FPS_ASSUMED = 60.0  # cameras misstate their rate; size the live ring for the fast case
DEFAULT_TOP_K = 5


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the stream stops cleanly; the exit code is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass(frozen=True)
class StreamOptions:
    """Everything the command line decides; validated by :meth:`check`."""

    source: str
    model: Path
    record: Path | None = None
    events: Path | None = None
    display: bool = True
    realtime: bool = False
    smoothing: SmoothingPolicy = SmoothingPolicy.EMA
    alpha: float | None = None
    window: int | None = None
    min_score: float | None = None
    every: int | None = None
    top_k: int = DEFAULT_TOP_K
    device: Device = Device.AUTO
    threads: int = 0
    reconnect: int = DEFAULT_RECONNECTS
    fps: float | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    cache_dir: Path | None = None  # TensorRT engines; None: stream.runtime.default_cache_dir()

    def check(self) -> None:
        """Raise :class:`OptionError` for values that cannot work (before anything is opened)."""
        if self.every is not None and self.every < 1:
            raise OptionError(f"--every must be a whole number of frames >= 1, got {self.every}")
        if self.top_k < 1:
            raise OptionError(f"--top-k must be >= 1, got {self.top_k}")
        if self.threads < 0:
            raise OptionError(f"--threads must be >= 0 (0: ONNX Runtime's default), got {self.threads}")
        if self.reconnect < 0:
            raise OptionError(f"--reconnect must be >= 0, got {self.reconnect}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise OptionError(f"--fps must be a positive number, got {self.fps}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise OptionError(f"the source timeout must be positive, got {self.timeout_s}")
        # The smoother checks its own options; two placeholder classes are enough for that.
        make_smoother(
            self.smoothing, ("a", "b"), alpha=self.alpha, window=self.window, min_score=self.min_score
        )


def display_available() -> bool:
    """Whether an OpenCV window can be shown: on Linux and BSD, only with an X or Wayland display."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class PreviewWindow:
    """The OpenCV window; q or Esc (or closing it) asks the stream to stop."""

    def __init__(self, wanted: bool, say) -> None:
        self._say = say
        self.enabled = wanted and display_available()
        self._opened = False
        if wanted and not self.enabled:
            say("no display found (DISPLAY/WAYLAND_DISPLAY unset): running headless; "
                "pass --no-display to silence this")  # fmt: skip

    def show(self, frame: np.ndarray) -> bool:
        """Show ``frame``; False when the user asked to quit."""
        if not self.enabled:
            return True
        try:
            cv2.imshow(WINDOW_TITLE, frame)
            self._opened = True
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), ord("Q"), 27):
                return False
            return cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error as exc:  # an OpenCV built without GUI support
            self.enabled = False
            self._say(f"cannot open a window ({str(exc).strip().splitlines()[-1]}); running headless")
            return True

    def close(self) -> None:
        if self._opened:
            try:
                cv2.destroyWindow(WINDOW_TITLE)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._opened = False


@dataclass
class _RateMeter:
    """Events per second over a sliding window of recent event times."""

    window_s: float = 2.0
    times: deque = field(default_factory=lambda: deque(maxlen=256))

    def tick(self, now: float) -> None:
        self.times.append(now)

    def rate(self) -> float | None:
        times = self.times
        while len(times) > 2 and times[-1] - times[0] > self.window_s:
            times.popleft()
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


def raw_label(scores: np.ndarray, class_names) -> Label:
    index = int(np.argmax(scores))
    return Label(index, class_names[index], float(scores[index]))


def top_k_of(scores: np.ndarray | None, class_names, k: int) -> tuple[tuple[str, float], ...]:
    if scores is None:
        return ()
    order = np.argsort(-np.nan_to_num(np.asarray(scores, np.float64), nan=-1.0), kind="stable")[:k]
    return tuple((class_names[i], float(scores[i])) for i in order)


class StreamPipeline:
    """Wires source, ring, capture, worker, presenter, recorder, events and console; :meth:`run`."""

    def __init__(self, options: StreamOptions, *, console: Console | None = None) -> None:
        options.check()
        self.options = options
        self.console = console or Console()
        self.stop_event = threading.Event()
        self.summary: dict[str, Any] | None = None
        self.capture: CaptureThread | None = None
        self.worker: InferenceWorker | None = None
        self.ring: FrameRing | None = None
        self.recorder: VideoRecorder | None = None
        self.source: VideoSource | None = None
        self.provider: str | None = None
        self.ended_by: str = "end of stream"
        self._runner: Runner | None = None
        self._finalizing = False
        self._signalled: int | None = None
        self._deferring = False  # inside uninterrupted(): a signal waits for its end
        self._deferred: int | None = None

    def say(self, message: str) -> None:
        self.console.print(f"epic-stream: {message}", markup=False, highlight=False, soft_wrap=True)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Stream until the source ends, the user quits or a signal comes; return the summary."""
        with self._signals():
            return self._run()

    def _run(self) -> dict[str, Any]:
        opts = self.options
        # Outputs first: a typo in a path must not cost a model load and a camera open.
        if opts.record is not None:
            check_record_path(opts.record)
        if opts.events is not None:
            check_events_path(opts.events)

        session, contract, provider = create_session(
            opts.model, opts.device, opts.threads, cache_dir=opts.cache_dir
        )
        self.provider = provider
        runner = Runner(session, contract, provider)
        clip = "consecutive frames" if contract.clip_seconds is None else f"{contract.clip_seconds:g} s"
        self.say(
            f"model {Path(opts.model).name}: {contract.num_frames} frames over {clip} at "
            f"{contract.image_size} px, {contract.num_classes} classes; running on {provider}"
            + (" with IO binding" if runner.uses_io_binding else "")
        )
        smoother = make_smoother(
            opts.smoothing, contract.class_names,
            alpha=opts.alpha, window=opts.window, min_score=opts.min_score,
        )  # fmt: skip

        source = self.source = open_source(
            opts.source, fps=opts.fps, reconnect=opts.reconnect, timeout_s=opts.timeout_s
        )
        try:
            return self._stream(source, runner, contract, smoother)
        finally:
            source.close()

    def _plan(self, source: VideoSource, contract) -> tuple[CaptureMode, int | None, int, int]:
        """Capture mode, prediction spacing (None: live) and the two ring capacities."""
        opts = self.options
        if source.is_live:
            mode = CaptureMode.LIVE
        else:
            mode = CaptureMode.PACED if opts.realtime else CaptureMode.LOSSLESS
        if mode.is_live and opts.every is not None:
            log.warning("--every applies to files; a live stream predicts as often as the model can")
        every = None if mode.is_live else (opts.every or default_every(source.fps))
        fps = source.fps or LIVE_FPS_ASSUMED
        if mode is CaptureMode.LIVE:
            fps = max(fps, LIVE_FPS_ASSUMED)
        span = contract.num_frames
        if contract.clip_seconds is not None:
            # 25% slack for variable frame rates; the ring also survives being too small.
            span = max(span, math.ceil(contract.clip_seconds * fps * 1.25) + 1)
        # Files: room for the clip span plus the next prediction interval, so that capture
        # decodes the next clip's frames while the model runs on this one.
        capacity = min(MAX_RING_SLOTS, span + (every or 0) + contract.num_frames + 8)
        # Files: the presenter trails capture by up to two prediction intervals (it waits for
        # the prediction at frame k while capture decodes the frames of the next one), within a
        # memory budget: a smaller display ring only costs overlap, never correctness.
        width, height = source.frame_size
        affordable = max(4, DISPLAY_BUDGET_BYTES // (width * height * 3))
        display = LIVE_DISPLAY_SLOTS if every is None else min(max(4, 2 * every + 4), affordable)
        return mode, every, max(capacity, display + 1), display

    def _stream(self, source: VideoSource, runner: Runner, contract, smoother) -> dict[str, Any]:
        opts = self.options
        mode, every, capacity, display_capacity = self._plan(source, contract)
        width, height = source.frame_size
        ring = self.ring = FrameRing(
            capacity, contract.image_size, (height, width, 3),
            display_capacity=display_capacity, lossless=mode is CaptureMode.LOSSLESS,
        )  # fmt: skip
        board = PredictionBoard(ring.cond)
        what = (
            f"{source.frame_count} frames" if source.frame_count else "live"
        ) + (f" at {source.fps:g} fps" if source.fps else "")
        how = {
            CaptureMode.LOSSLESS: f"every frame, a prediction every {every} frames",
            CaptureMode.PACED: "in real time (frames may drop)",
            CaptureMode.LIVE: "live",
        }[mode]
        self.say(f"source {source.name} ({what}) {width}x{height}: {how}")

        recorder = self.recorder = (
            VideoRecorder(opts.record, fps=None if mode.is_live else source.fps)
            if opts.record is not None
            else None
        )
        events = EventLog.open(opts.events, contract.class_names)
        window = PreviewWindow(opts.display, self.say)
        live_view = LiveConsole(
            source.name, Path(opts.model).name, runner.provider,
            None if mode.is_live else source.frame_count, contract.class_names,
            console=self.console,
        )  # fmt: skip

        self.capture = CaptureThread(source, ring, contract.image_size, self.stop_event, mode=mode)
        self.worker = InferenceWorker(ring, runner, contract, board, self.stop_event, every=every)
        self._runner = runner
        presenter = _Presenter(
            self, ring, board, smoother, contract, events, recorder, window, live_view, every
        )
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            live_view.start()
            self.capture.start()
            self.worker.start()
            presenter.loop()
            self._raise_thread_error(drained=True)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            # From here on a signal is noted but does not interrupt: the outputs must be whole.
            self._finalizing = True
            wall_s = time.monotonic() - started
            self._shutdown()
            extra = {
                "fps": presenter.frames / wall_s if wall_s > 0 else None,
                "model_fps": board.count / wall_s if wall_s > 0 else None,
                "wall_s": wall_s,
                "provider": runner.provider,
                "model": str(opts.model),
                "source": source.name,
                "mode": mode.value,
                "every": every,
                "ended_by": self._ending(failure),
            }
            dropped = presenter.skipped + self.capture.dropped
            try:
                try:
                    if recorder is not None:
                        recorder.close()
                finally:
                    self.summary = events.close(
                        frames=presenter.frames, dropped_frames=dropped, extra=extra
                    )
            finally:
                live_view.stop()
                window.close()
            if source.end_note:
                log.warning("%s", source.end_note)
            print_summary(self.summary, self.console)
        return self.summary

    def _ending(self, failure: BaseException | None) -> str:
        if isinstance(failure, Interrupted):
            return signal.Signals(failure.signum).name
        if isinstance(failure, KeyboardInterrupt):
            return "SIGINT"
        if failure is not None:
            return f"error: {type(failure).__name__}"
        if self.ended_by == "end of stream" and self.source is not None and self.source.end_note:
            # A truncated file or a camera that stayed down: the events file, often the only
            # record of an unattended run, says so, not just the console.
            return self.source.end_note
        return self.ended_by

    # -- threads ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every thread to stop and wake all of them."""
        self.stop_event.set()
        if self.ring is not None:
            with self.ring.cond:
                self.ring.cond.notify_all()

    def _shutdown(self) -> None:
        self.stop()
        if self._runner is not None:
            self._runner.cancel()  # a slow model's run in progress need not finish
        if self.source is not None:
            self.source.close()  # unblocks a capture waiting on a stalled stream
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in (self.capture, self.worker):
            if thread is not None and thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("%s did not stop within %.0f s", thread.name, JOIN_TIMEOUT_S)

    def _raise_thread_error(self, *, drained: bool) -> None:
        """Re-raise a thread's exception here. A worker's at once; a capture failure once the
        frames read before it have been presented (``drained``)."""
        threads = (self.worker, self.capture) if drained else (self.worker,)
        for thread in threads:
            if thread is not None and thread.error is not None:
                error, thread.error = thread.error, None
                raise error

    # -- signals ---------------------------------------------------------------------------------

    @contextmanager
    def uninterrupted(self):
        """A signal that comes inside this block is raised at its end, so that the block's steps
        happen together or not at all (a frame is recorded, noted and counted, or none of it)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._deferred is not None:
            signum, self._deferred = self._deferred, None
            raise Interrupted(signum)

    @contextmanager
    def _signals(self):
        """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once; a signal that
        comes while the outputs are being finalized is noted and does not cut that short."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signalled is not None or self._finalizing:
                self._signalled = self._signalled or signum
                return
            self._signalled = signum
            if self._deferring:
                self._deferred = signum
                return
            raise Interrupted(signum)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class _Presenter:
    """The main-thread loop; split from StreamPipeline to keep the per-frame state together."""

    def __init__(
        self, pipeline, ring, board, smoother, contract, events, recorder, window, live_view, every
    ) -> None:
        self.pipeline = pipeline
        self.ring: FrameRing = ring
        self.board: PredictionBoard = board
        self.smoother = smoother
        self.names = contract.class_names
        self.top_k = min(pipeline.options.top_k, contract.num_classes)
        self.events: EventLog = events
        self.recorder: VideoRecorder | None = recorder
        self.window: PreviewWindow = window
        self.live_view: LiveConsole = live_view
        self.every = every
        self.source_name = pipeline.source.name
        self.frames = 0
        self.skipped = 0
        self.latest: Prediction | None = None
        self.smoothed: Label | None = None
        self._latencies: deque[float] = deque(maxlen=256)
        self._capture_rate = _RateMeter()
        self._model_rate = _RateMeter()
        self._top: tuple[tuple[str, float], ...] = ()
        self._percentiles: tuple[float | None, float | None] = (None, None)

    def loop(self) -> None:
        ring, board, stop = self.ring, self.board, self.pipeline.stop_event
        seq = 0
        while not stop.is_set():
            frame, skipped = ring.acquire(seq, stop)
            self.skipped += skipped
            if frame is None:
                return
            info = frame.info
            try:
                if self.every is not None:
                    board.wait_through(info.index - info.index % self.every, stop)
                    if stop.is_set():
                        return
                keep_going = self._present(frame.image, info)
            finally:
                ring.release(info.seq)
            self.pipeline._raise_thread_error(drained=False)
            if not keep_going:
                self.pipeline.ended_by = "quit by the user"
                return
            seq = info.seq + 1

    def _present(self, image: np.ndarray, info) -> bool:
        now = time.monotonic()
        for prediction in self.board.take_through(info.index):
            self.smoothed = self.smoother.update(prediction.scores)
            self.events.write_prediction(
                prediction, raw_label(prediction.scores, self.names), self.smoothed
            )
            self.latest = prediction
            self._latencies.append(prediction.latency_ms)
            self._model_rate.tick(now)
            smoothed_scores = self.smoother.scores
            self._top = top_k_of(
                prediction.scores if smoothed_scores is None else smoothed_scores,
                self.names, self.top_k,
            )  # fmt: skip
            # Percentiles of the recent predictions, for the console.
            self._percentiles = tuple(float(v) for v in np.percentile(self._latencies, [50, 95]))
        self._capture_rate.tick(info.captured_s)
        latest = self.latest
        # A result is stale when there is none yet, or (live) when its clip ended long before
        # this frame: then it is greyed and marked as waiting, never shown as current.
        stale = latest is None or (
            self.every is None and info.time_s - latest.time_s > STALE_AFTER_S
        )
        label = self.smoothed or Label.no_action()
        capture_fps, model_fps = self._capture_rate.rate(), self._model_rate.rate()
        if self.recorder is not None or self.window.enabled:
            # Headless without --record nobody sees the frame: drawing would only take CPU
            # from the decoder, which bounds a file's speed.
            draw_overlay(
                image,
                OverlayState(
                    label=label,
                    top_k=self._top,
                    capture_fps=capture_fps,
                    model_fps=model_fps,
                    latency_ms=latest.latency_ms if latest is not None else None,
                    stale=stale,
                    source_name=self.source_name,
                ),
            )
        # A signal between these would leave the summary's frame count off the recording's.
        with self.pipeline.uninterrupted():
            if self.recorder is not None:
                self.recorder.write(image, info.time_s)
            self.events.note_frame(info.index, info.time_s, self.smoothed)
            self.frames += 1
        keep_going = self.window.show(image)
        p50, p95 = self._percentiles
        self.live_view.update(
            StreamStats(
                frames=self.frames,
                predictions=self.board.count,
                dropped_frames=self.skipped + (self.pipeline.capture.dropped if self.pipeline.capture else 0),
                capture_fps=capture_fps,
                model_fps=model_fps,
                latency_ms_p50=p50,
                latency_ms_p95=p95,
                position_s=info.time_s,
            ),
            label,
            self._top,
        )
        return keep_going
