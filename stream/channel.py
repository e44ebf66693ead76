"""StreamChannel: everything one stream owns. Only the inference scheduler is shared.

A channel holds its source and capture thread, its ring, its lane on the shared scheduler, its
prediction board, its smoother, its presenter thread and its outputs (sinks). Its threads wait on
the channel's own stop event, which the run's shared stop also sets, so one stream can end (its
file is over, its camera is gone for good, its disk is full) while the others go on.

The presenter presents each frame in order. It applies the predictions whose clip ends at or
before that frame (smoothing them), draws the overlay when some sink wants the picture, and hands
the frame to every sink. In file mode it first waits for the prediction due at that frame, so
every recorded frame carries the smoothed label of the latest prediction whose clip ends at or
before it, on any machine and beside any other streams. When the source ends, the prediction still
in flight is awaited (bounded) and written. Then the presenter closes every sink: the recording is
finalized and the stream's summary line is written, whatever ended the stream.

Warm-up and broken predictions never steer the label: a clip padded with the first frame (the
source has not covered the model's clip span yet) and a score vector with NaN or inf are written to
the events, flagged, and kept out of smoothing, segments and ``video_label``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stream.capture import CaptureMode, CaptureThread
from stream.console import StreamStats
from stream.contract import ModelContract
from stream.events import MS_DECIMALS, EventWriter, wall_time
from stream.overlay import OverlayState, draw_overlay
from stream.prediction import Label, Prediction, top_k, top_label
from stream.ring import FrameRing, Overflow
from stream.scheduler import ClipPolicy, Lane, PredictionBoard, default_every
from stream.signals import Stopper
from stream.sinks import Sink, StreamTotals
from stream.sketch import LatencySketch
from stream.smoothing import Smoother
from stream.source import SourceState, VideoSource

log = logging.getLogger(__name__)

STALE_AFTER_S = 1.0  # live: a result whose clip ended this long before the frame is stale
JOIN_TIMEOUT_S = 2.0
LAST_RESULT_TIMEOUT_S = 30.0  # a source that ended waits this long for its last prediction
MAX_RING_SLOTS = 4096  # model-size frames: 600 MB at 224 px; only an absurd clip_seconds gets here
LIVE_DISPLAY_SLOTS = 8  # how far the presenter may lag a live source before frames drop
DISPLAY_BUDGET_BYTES = 512 * 1024 * 1024  # full-size frames held for files' presenters, all streams
SERVER_LOST = "server lost"
LIVE_FPS_ASSUMED = 60.0  # cameras misstate their rate; size the live ring for the fast case


@dataclass(frozen=True)
class ChannelPlan:
    """How a stream is captured and scheduled, decided once from its source and the model."""

    mode: CaptureMode
    every: int | None  # files: frames between predictions; None: live (the newest clip)
    capacity: int  # model-size ring slots
    display_capacity: int  # full-size ring slots

    @property
    def policy(self) -> ClipPolicy:
        return ClipPolicy.NEWEST if self.every is None else ClipPolicy.FIXED

    @property
    def overflow(self) -> Overflow:
        return Overflow.WAIT if self.mode is CaptureMode.LOSSLESS else Overflow.OVERWRITE


def plan_channel(
    source: VideoSource,
    contract: ModelContract,
    *,
    realtime: bool,
    every: int | None,
    display_budget: int = DISPLAY_BUDGET_BYTES,
) -> ChannelPlan:
    """The capture mode, prediction spacing and ring sizes for ``source``."""
    if source.is_live:
        mode = CaptureMode.LIVE
    else:
        mode = CaptureMode.PACED if realtime else CaptureMode.LOSSLESS
    if mode.is_live and every is not None:
        log.warning("--every applies to files; a live stream predicts as often as the model can")
    every = None if mode.is_live else (every or default_every(source.fps))
    fps = source.fps or LIVE_FPS_ASSUMED
    if mode is CaptureMode.LIVE:
        fps = max(fps, LIVE_FPS_ASSUMED)
    span = contract.num_frames
    if contract.clip_seconds is not None:
        # 25% slack for variable frame rates; the ring also survives being too small.
        span = max(span, math.ceil(contract.clip_seconds * fps * 1.25) + 1)
    # Files: room for the clip span plus the next prediction interval, so that capture decodes
    # the next clip's frames while the model runs on this one.
    capacity = min(MAX_RING_SLOTS, span + (every or 0) + contract.num_frames + 8)
    # Files: the presenter trails capture by up to two prediction intervals (it waits for the
    # prediction at frame k while capture decodes the frames of the next one), within a memory
    # budget: a smaller display ring only costs overlap, never correctness.
    width, height = source.frame_size
    affordable = max(4, display_budget // (width * height * 3))
    display = LIVE_DISPLAY_SLOTS if every is None else min(max(4, 2 * every + 4), affordable)
    return ChannelPlan(mode, every, max(capacity, display + 1), display)


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


class StreamChannel:
    """One stream: capture -> ring -> (shared scheduler) -> board -> presenter -> sinks."""

    def __init__(
        self,
        name: str,
        source: VideoSource,
        contract: ModelContract,
        plan: ChannelPlan,
        *,
        smoother: Smoother,
        sinks: Sequence[Sink],
        stopper: Stopper,
        doorbell,
        console_view,
        top_k: int,
        max_rate: float | None = None,
        trace_clips: bool = False,
    ) -> None:
        self.name = name
        self.source = source
        self.contract = contract
        self.plan = plan
        self.smoother = smoother
        self.sinks = list(sinks)
        self.console_view = console_view
        self.top_k = min(top_k, contract.num_classes)
        self.stop_event = threading.Event()
        self._stopper = stopper
        width, height = source.frame_size
        self.ring = FrameRing(
            plan.capacity,
            contract.image_size,
            (height, width, 3),
            display_capacity=plan.display_capacity,
            overflow=plan.overflow,
            on_publish=doorbell,
        )
        self.board = PredictionBoard(self.ring.cond)
        self.lane = Lane(
            name,
            self.ring,
            self.board,
            plan.policy,
            every=plan.every,
            max_rate=max_rate,
            trace_clips=trace_clips,
            on_server=self._on_server,
        )
        self.capture = CaptureThread(
            source, self.ring, contract.image_size, self.stop_event, mode=plan.mode, name=name
        )
        self._presenter = threading.Thread(
            target=self._present_and_finish, name=f"epic-present-{name}", daemon=True
        )
        stopper.on_stop(self.stop)
        # Presenter state.
        self.frames = 0
        self.skipped = 0
        self.error: BaseException | None = None  # this stream's own failure (source, outputs)
        self.summary: dict[str, Any] | None = None
        self.ended_by: str | None = None  # set by "quit" and the like; else derived at the end
        self.started_at: float | None = None
        self.latest: Prediction | None = None
        self.smoothed: Label | None = None
        self._first_time_s: float | None = None
        self._latencies: deque[float] = deque(maxlen=256)
        self._capture_rate = _RateMeter()
        self._model_rate = _RateMeter()
        self._top: tuple[tuple[str, float], ...] = ()
        self._percentiles: tuple[float | None, float | None] = (None, None)
        self._finish_lock = threading.Lock()
        # The current --stats-every period, read and reset by the main thread.
        self._stats_lock = threading.Lock()
        self._period_latency = LatencySketch()
        self._period_start: tuple[float, int, int, int] | None = (
            None  # (time, frames read, predictions, dropped)
        )
        # The source's state, as its events lines and the views report it; changed from the
        # capture thread (losses), the main thread (stalls) and the presenter (the end).
        self.source_state = SourceState.OPENED
        self._state_lock = threading.Lock()
        self._last_time_s: float | None = None  # the newest presented frame's source time
        self._last_stats: tuple[StreamStats, Label] | None = None
        self._stall_seen = (0, 0.0)  # (frames read, monotonic time they were first seen)
        source.on_state = self.report_source

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._stall_seen = (0, self.started_at)
        width, height = self.source.frame_size
        fps = f" at {self.source.fps:g} fps" if self.source.fps else ""
        self.report_source(SourceState.OPENED, f"{self.source.name}, {width}x{height}{fps}")
        self.capture.start()
        self._presenter.start()

    def stop(self) -> None:
        """Ask this stream's threads to stop, and wake them."""
        self.stop_event.set()
        with self.ring.cond:
            self.ring.cond.notify_all()

    @property
    def running(self) -> bool:
        return self._presenter.is_alive()

    @property
    def dropped(self) -> int:
        return self.skipped + self.capture.dropped

    def join(self, timeout_s: float) -> None:
        """Wait for the presenter (which finalizes the outputs) and the capture thread; if the
        presenter could not finish in time, finalize here."""
        deadline = time.monotonic() + timeout_s
        if self._presenter.is_alive():
            self._presenter.join(max(0.0, deadline - time.monotonic()))
        stuck = self._presenter.is_alive()
        if stuck:
            # It may be inside a sink (a hung disk): finalizing beside it could tear a file.
            log.warning("%s: the presenter did not stop within %.0f s", self.name, timeout_s)
        self.stop()
        self.source.close()  # unblocks a capture waiting on a stalled stream
        if self.capture.is_alive():
            self.capture.join(max(0.0, min(JOIN_TIMEOUT_S, deadline - time.monotonic())))
            if self.capture.is_alive():
                log.warning("%s did not stop within %.0f s", self.capture.name, JOIN_TIMEOUT_S)
        if self.summary is None and not stuck:
            self.finish()

    # -- the presenter thread --------------------------------------------------------------------

    def _present_and_finish(self) -> None:
        try:
            self._present_all()
            if self.capture.error is not None and self.error is None:
                # Re-raised by the run once the frames read before the failure are presented.
                self.error = self.capture.error
        except BaseException as exc:
            self.error = exc
        finally:
            self.stop()  # the capture thread stops too if the presenter failed
            try:
                self.finish()
            except BaseException as exc:
                if self.error is None:
                    self.error = exc

    def _present_all(self) -> None:
        ring, board, stop = self.ring, self.board, self.stop_event
        every = self.plan.every
        seq = 0
        while not stop.is_set():
            frame, skipped = ring.acquire(seq, stop)
            self.skipped += skipped
            if frame is None:
                break
            info = frame.info
            try:
                if every is not None:
                    board.wait_through(info.index - info.index % every, stop)
                    if stop.is_set():
                        break
                self._present(frame.image, info)
            finally:
                ring.release(info.seq)
            seq = info.seq + 1
        if not stop.is_set():
            # The source ended: the prediction still in flight is awaited, not thrown away.
            board.wait_finished(LAST_RESULT_TIMEOUT_S, stop)
        for prediction in board.take_all():
            self._apply(prediction, time.monotonic())

    def _apply(self, prediction: Prediction, now: float) -> None:
        """Smooth a prediction (unless it is warm-up or broken) and hand it to every sink."""
        valid = prediction.valid
        if valid and not prediction.warmup:
            self.smoothed = self.smoother.update(prediction.scores, prediction.time_s)
        raw = (
            top_label(prediction.scores, self.contract.class_names)
            if valid
            else Label.no_action(math.nan)
        )
        shown = self.smoothed or Label.no_action()
        for sink in self.sinks:
            sink.prediction(prediction, raw, shown)
        self.latest = prediction
        self._model_rate.tick(now)
        if math.isfinite(prediction.latency_ms):
            with self._stats_lock:
                self._period_latency.add(prediction.latency_ms)
            self._latencies.append(prediction.latency_ms)
            self._percentiles = tuple(float(v) for v in np.percentile(self._latencies, [50, 95]))
        smoothed_scores = self.smoother.scores
        if valid and not prediction.warmup:
            self._top = top_k(
                prediction.scores if smoothed_scores is None else smoothed_scores,
                self.contract.class_names,
                self.top_k,
            )

    def _present(self, image: np.ndarray, info) -> None:
        now = time.monotonic()
        if self._first_time_s is None:
            self._first_time_s = info.time_s
        for prediction in self.board.take_through(info.index):
            self._apply(prediction, now)
        self._capture_rate.tick(info.captured_s)
        latest = self.latest
        # A result is stale when there is none yet, or (live) when its clip ended long before
        # this frame: then it is greyed and marked as waiting, never shown as current.
        stale = latest is None or (
            self.plan.every is None and info.time_s - latest.time_s > STALE_AFTER_S
        )
        self._last_time_s = info.time_s
        notice = self._notice()
        stale = stale or notice is not None
        label = self.smoothed or Label.no_action()
        capture_fps, model_fps = self._capture_rate.rate(), self._model_rate.rate()
        if any(sink.wants_image for sink in self.sinks):
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
                    source_name=self.name,
                    warmup_s=self._warmup_left(info.time_s),
                    notice=notice,
                ),
            )
        for sink in self.sinks:
            sink.frame(image, info, self.smoothed)
        self.frames += 1
        p50, p95 = self._percentiles
        stats = StreamStats(
            frames=self.frames,
            predictions=self.board.count,
            dropped_frames=self.dropped,
            capture_fps=capture_fps,
            model_fps=model_fps,
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            position_s=info.time_s,
            notice=notice,
        )
        self.console_view.update(stats, label, self._top)
        self._last_stats = (stats, label)

    # -- the source's state ------------------------------------------------------------------------

    def _notice(self) -> str | None:
        """What the views show in place of a fresh label: the server or the source is down."""
        if self.lane.server_lost:
            return SERVER_LOST
        state = self.source_state
        return None if state.healthy or state is SourceState.ENDED else f"source {state.value}"

    def report_source(self, state: SourceState, detail: str) -> None:
        """Note a change of the source's state: an events line, the sinks, and the terminal at
        once (a stalled stream presents no frame that could carry it)."""
        with self._state_lock:
            if state is self.source_state and state is not SourceState.OPENED:
                return
            self.source_state = state
        for sink in self.sinks:
            try:
                sink.source(state.value, self._last_time_s, detail)
            except Exception as exc:  # this stream's output; the presenter meets it again
                log.warning("%s: cannot write the source event: %s", self.name, exc)
        last = self._last_stats
        if last is not None and state is not SourceState.ENDED:
            stats, label = last
            self.console_view.update(replace(stats, notice=self._notice()), label, self._top)

    def check_stall(self, now: float, stall_s: float) -> None:
        """Main thread: a live source that delivered no frame for ``stall_s`` is stalled (its
        connection may still be open: only the read timeout would notice, much later)."""
        if not self.plan.mode.is_live or self.summary is not None:
            return
        frames = self.capture.frames
        seen, since = self._stall_seen
        if frames != seen:
            self._stall_seen = (frames, now)
            if self.source_state is SourceState.STALLED:
                self.report_source(SourceState.RESUMED, f"after {now - since:.1f} s without frames")
            return
        if now - since >= stall_s and self.source_state.healthy:
            self.report_source(SourceState.STALLED, f"no frame for {now - since:.1f} s")

    def _on_server(self, event) -> None:
        """The scheduler lost the inference server or got it back (its thread): tell the sinks
        (the events line) now; the presenter shows it from ``lane.server_lost``."""
        wall_s = time.monotonic() - (self.started_at or time.monotonic())
        for sink in self.sinks:
            try:
                sink.server(event.lost, wall_s, event.detail, event.outages)
            except Exception as exc:  # this stream's output; the presenter meets it again
                log.warning("%s: cannot write the server event: %s", self.name, exc)

    def _warmup_left(self, time_s: float) -> float | None:
        """Source seconds until the first full clip, while no label is shown yet."""
        span = self.contract.clip_seconds
        if self.smoothed is not None or not span or self._first_time_s is None:
            return None
        return max(0.0, span - (time_s - self._first_time_s))

    # -- periodic stats (the main thread) --------------------------------------------------------

    def write_stats(self, writer: EventWriter, now: float | None = None) -> dict[str, Any] | None:
        """Write a ``stats`` line covering the time since the last one (or the start); the first
        call only starts the period. Counts come from the capture, so a stalled stream reports
        its zero rate too."""
        now = time.monotonic() if now is None else now
        counts = (now, self.capture.frames, self.board.count, self.dropped)
        with self._stats_lock:
            start, self._period_start = self._period_start, counts
            latency, self._period_latency = self._period_latency, LatencySketch()
        if start is None:
            return None
        period = now - start[0]
        if period <= 0:
            return None
        p50, p95 = latency.percentile(50), latency.percentile(95)
        record = {
            "type": "stats",
            "stream": self.name,
            "wall_time": wall_time(),
            "period_s": round(period, 3),
            "capture_fps": round((counts[1] - start[1]) / period, 3),
            "predictions": counts[2] - start[2],
            "predictions_per_s": round((counts[2] - start[2]) / period, 3),
            "latency_ms_p50": None if p50 is None else round(p50, MS_DECIMALS),
            "latency_ms_p95": None if p95 is None else round(p95, MS_DECIMALS),
            "dropped_frames": counts[3] - start[3],
        }
        writer.write(record)
        return record

    # -- the end ---------------------------------------------------------------------------------

    def _ending(self, close_errors: Sequence[BaseException] = ()) -> str:
        if self.error is not None:
            return f"error: {type(self.error).__name__}"
        if close_errors:
            return f"error: {type(close_errors[0]).__name__}"
        if self.ended_by is not None:
            return self.ended_by
        if self._stopper.reason is not None:
            return self._stopper.reason
        # A truncated file or a camera that stayed down: the events file, often the only record
        # of an unattended run, says so, not just the console.
        return self.source.end_note or "end of stream"

    def finish(self) -> dict[str, Any] | None:
        """Close every sink once (the events sink last, so the summary is written even when the
        recording fails to close); an error while closing never hides the stream's own error."""
        with self._finish_lock:
            if self.summary is not None:
                return self.summary
            wall_s = time.monotonic() - (self.started_at or time.monotonic())
            extra = {
                "fps": self.frames / wall_s if wall_s > 0 else None,
                "model_fps": self.board.count / wall_s if wall_s > 0 else None,
                "wall_s": wall_s,
                "source": self.source.name,
                "mode": self.plan.mode.value,
                "every": self.plan.every,
            }
            if self.lane.outages is not None:  # --server: how often it was lost
                extra["server_outages"] = self.lane.outages
            self.report_source(SourceState.ENDED, self._ending())
            close_errors: list[BaseException] = []
            summary: dict[str, Any] | None = None
            ordered = sorted(self.sinks, key=lambda sink: sink.__class__.__name__ == "EventsSink")
            for sink in ordered:
                totals = StreamTotals(
                    self.frames, self.dropped, {**extra, "ended_by": self._ending(close_errors)}
                )
                try:
                    summary = sink.close(totals) or summary
                except Exception as exc:
                    close_errors.append(exc)
            self.summary = summary or {}
            if close_errors:
                if self.error is None:
                    self.error = close_errors[0]
                for exc in close_errors[1 if self.error is close_errors[0] else 0 :]:
                    log.warning("%s: also failed while finalizing: %s", self.name, exc)
            if self.source.end_note:
                log.warning("%s", self.source.end_note)
            return self.summary
