"""StreamPipeline: the wiring of one run. N streams, one shared inference scheduler, one session.

    source -> CaptureThread -> FrameRing ---> InferenceScheduler (shared) ---> PredictionBoard
              (per stream)      (per stream)   one session.run per batch        (per stream)
                                    |                                                |
                                    +------> presenter thread (per stream) <---------+
                                             smoothing, overlay, sinks: recording, events,
                                             window tile, terminal row

The pipeline checks the options and the outputs before anything is opened, opens the model and
the sources, builds one :class:`~stream.channel.StreamChannel` per stream and the
:class:`~stream.scheduler.InferenceScheduler`, and then the main thread only shows the window (OpenCV's GUI must
run there) and watches for the end, an error or a signal.

Every exit (every stream's end, q/Esc, Ctrl-C, SIGTERM, an error in any thread) goes through one
``finally``: the stop reaches every thread, the scheduler is cancelled only when the user or an
error stopped the run (at a normal end its last batch is awaited), each channel finalizes its
outputs (recording, summary line), the events file is closed and the summaries are printed. A
stream's own failure (its source, its disk) ends that stream only; the run then exits with that
error once the others are done. An error of the shared model ends every stream.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from stream.capture import CaptureMode
from stream.channel import DISPLAY_BUDGET_BYTES, StreamChannel, plan_channel
from stream.console import LiveConsole, StreamsConsole, print_summary
from stream.errors import OptionError
from stream.events import STDOUT, EventLog, EventWriter
from stream.events import check_writable as check_events_path
from stream.naming import NamedSource, name_sources
from stream.outputs import check_outputs, record_paths
from stream.recorder import VideoRecorder, check_record_path
from stream.runtime import (
    Device,
    Runner,
    batch_candidates,
    create_session,
    default_cache_dir,
    load_batch_costs,
    measure_batch_costs,
    save_batch_costs,
)
from stream.scheduler import DEFAULT_BATCH_WAIT_MS, InferenceScheduler
from stream.signals import Interrupted, SignalGuard, Stopper
from stream.sinks import EventsSink, RecorderSink
from stream.smoothing import SmoothingPolicy, make_smoother
from stream.source import (
    DEFAULT_RECONNECTS,
    DEFAULT_STALL_S,
    DEFAULT_TIMEOUT_S,
    RtspTransport,
    TimeBase,
    VideoSource,
    mask_credentials,
    open_source,
)
from stream.triton_client import DEFAULT_SERVER_TIMEOUT_S
from stream.webview import (
    DEFAULT_SERVE_FPS,
    LiveView,
    ServeAddress,
    StreamCard,
    WebSink,
    check_serve_options,
)
from stream.window import GridWindow

__all__ = ["Interrupted", "StreamOptions", "StreamPipeline"]

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
CPU_MAX_RATE = 8.0  # live predictions/s per stream on the CPU provider unless --max-rate says
LIVE_STATS_EVERY_S = 60.0  # stats lines of live streams unless --stats-every says
FINISH_TIMEOUT_S = 10.0  # a stream's presenter to finalize its outputs after the stop
SCHEDULER_JOIN_S = 2.0  # after a cancel
WATCH_S = 0.05  # the main thread's wait between window refreshes and error checks


@dataclass(frozen=True)
class StreamOptions:
    """Everything the command line decides; validated by :meth:`check`."""

    source: str | tuple[str, ...]
    model: Path
    record: Path | None = None
    events: Path | None = None
    display: bool = True
    realtime: bool = False
    smoothing: SmoothingPolicy = SmoothingPolicy.EMA
    alpha: float | None = None
    window: int | None = None
    tau_s: float | None = None  # ema: time constant in seconds (the default: 0.5)
    window_s: float | None = None  # vote/hysteresis: window in seconds (defaults 1.25 / 0.75)
    min_score: float | None = None
    every: int | None = None
    top_k: int = DEFAULT_TOP_K
    device: Device = Device.AUTO
    threads: int = 0
    reconnect: int = DEFAULT_RECONNECTS
    fps: float | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    batch: int | None = None  # the largest batch; None: the number of streams
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    # Live streams: the most predictions a second; None: 8 on the CPU provider, no cap on a GPU.
    max_rate: float | None = None
    # Seconds between stats lines; None: 60 for live streams, none for files; 0: none.
    stats_every: float | None = None
    stall_s: float = DEFAULT_STALL_S  # live: no frame this long is a "stalled" source event
    trace_clips: bool = False  # keep each stream's recent clips (tests and debugging)
    server: str | None = None  # grpc://HOST:PORT[/MODEL]: inference on a Triton server
    server_timeout_s: float = DEFAULT_SERVER_TIMEOUT_S
    rtsp_transport: RtspTransport = RtspTransport.TCP
    serve: ServeAddress | None = None  # --serve: the live page
    serve_token: str | None = None
    serve_fps: float = DEFAULT_SERVE_FPS
    cache_dir: Path | None = None  # TensorRT engines; None: stream.runtime.default_cache_dir()

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    def check(self) -> None:
        """Raise :class:`OptionError` for values that cannot work (before anything is opened)."""
        if not self.sources:
            raise OptionError("give at least one --source")
        if self.every is not None and self.every < 1:
            raise OptionError(f"--every must be a whole number of frames >= 1, got {self.every}")
        if self.top_k < 1:
            raise OptionError(f"--top-k must be >= 1, got {self.top_k}")
        if self.threads < 0:
            raise OptionError(
                f"--threads must be >= 0 (0: ONNX Runtime's default), got {self.threads}"
            )
        if self.reconnect < 0:
            raise OptionError(f"--reconnect must be >= 0, got {self.reconnect}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise OptionError(f"--fps must be a positive number, got {self.fps}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise OptionError(
                f"--timeout must be a positive number of seconds, got {self.timeout_s}"
            )
        if self.batch is not None and self.batch < 1:
            raise OptionError(f"--batch must be a whole number of clips >= 1, got {self.batch}")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise OptionError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_rate is not None and not (math.isfinite(self.max_rate) and self.max_rate > 0):
            raise OptionError(
                f"--max-rate must be a positive number of predictions a second, got {self.max_rate}"
            )
        if not (math.isfinite(self.stall_s) and self.stall_s > 0):
            raise OptionError(f"--stall-s must be a positive number of seconds, got {self.stall_s}")
        if self.stats_every is not None and not (
            math.isfinite(self.stats_every) and self.stats_every >= 0
        ):
            raise OptionError(
                f"--stats-every must be >= 0 seconds (0: no stats lines), got {self.stats_every}"
            )
        if self.serve is not None:
            check_serve_options(self.serve, self.serve_token, self.serve_fps)
        # The smoother checks its own options; two placeholder classes are enough for that.
        make_smoother(
            self.smoothing,
            ("a", "b"),
            alpha=self.alpha,
            window=self.window,
            min_score=self.min_score,
            tau_s=self.tau_s,
            window_s=self.window_s,
        )


class StreamPipeline:
    """Wires the streams, the scheduler and the outputs; :meth:`run`."""

    def __init__(self, options: StreamOptions, *, console: Console | None = None) -> None:
        options.check()
        self.options = options
        self.console = console or Console()
        self.stopper = Stopper()
        self.named: list[NamedSource] = name_sources(options.sources)
        self.channels: list[StreamChannel] = []
        self.scheduler: InferenceScheduler | None = None
        self.summaries: list[dict[str, Any]] = []
        self.provider: str | None = None
        self._sources: list[VideoSource] = []
        self.web_view: LiveView | None = None  # --serve

    def say(self, message: str) -> None:
        self.console.print(f"epic-stream: {message}", markup=False, highlight=False, soft_wrap=True)

    @property
    def summary(self) -> dict[str, Any] | None:
        """The single stream's summary (the first stream's, with several)."""
        return self.summaries[0] if self.summaries else None

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Stream until every source ends, the user quits or a signal comes; return the (first)
        summary. :attr:`summaries` has every stream's."""
        guard = SignalGuard(self.stopper)
        with guard.installed():
            try:
                return self._run(guard)
            finally:
                for source in self._sources:
                    source.close()
                if self.web_view is not None:
                    self.web_view.close()

    def _check_outputs(self) -> dict[str, Path]:
        """Outputs first: a typo in a path must not cost a model load and a camera open, and an
        output must never be one of the inputs."""
        opts = self.options
        names = [n.name for n in self.named]
        records = record_paths(opts.record, names)
        for path in records.values():
            check_record_path(path)
        to_file = opts.events is not None and str(opts.events) != STDOUT
        if to_file:
            check_events_path(opts.events)
        outputs = [("--record", path) for path in records.values()]
        if to_file:
            outputs.append(("--events", opts.events))
        check_outputs(self.named, outputs, self.say)
        return records

    def _start_web_view(self) -> LiveView:
        opts = self.options
        view = LiveView(
            opts.serve.host,
            opts.serve.port,
            token=opts.serve_token,
            max_fps=opts.serve_fps,
            streams=[StreamCard(n.name, mask_credentials(n.text)) for n in self.named],
        )
        view.start()
        self.say(f"live view on {view.url}" + (" (add ?token=TOKEN)" if opts.serve_token else ""))
        return view

    def _open_model(self) -> tuple[Runner, Any]:
        opts = self.options
        if opts.server is not None:
            from stream.triton_client import open_triton

            runner, contract = open_triton(
                opts.server,
                opts.model,
                batch=opts.batch or len(self.named),
                timeout_s=opts.server_timeout_s,
            )
            self.provider = runner.provider
            self.say(
                f"model {Path(opts.model).name} on {runner.provider}, batches of up to {runner.max_batch}"
            )
            return runner, contract
        session, contract, provider = create_session(
            opts.model, opts.device, opts.threads, cache_dir=opts.cache_dir
        )
        self.provider = provider
        wanted = opts.batch or len(self.named)
        max_batch = wanted if contract.max_batch is None else min(wanted, contract.max_batch)
        if max_batch < wanted:
            self.say(
                f"the model takes one clip at a time (its batch is fixed at {contract.max_batch}): "
                f"running batches of {max_batch}"
            )
        if opts.batch is None and max_batch > 1:
            max_batch = self._cheapest_batch(session, contract, provider, max_batch)
        runner = Runner(session, contract, provider, max_batch=max_batch)
        clip = (
            "consecutive frames"
            if contract.clip_seconds is None
            else f"{contract.clip_seconds:g} s"
        )
        batching = f", batches of up to {max_batch}" if len(self.named) > 1 or max_batch > 1 else ""
        self.say(
            f"model {Path(opts.model).name}: {contract.num_frames} frames over {clip} at "
            f"{contract.image_size} px, {contract.num_classes} classes; running on {provider}"
            + (" with IO binding" if runner.uses_io_binding else "")
            + batching
        )
        return runner, contract

    def _cheapest_batch(self, session, contract, provider: str, limit: int) -> int:
        """The batch size, up to ``limit``, that costs least per clip on this provider.

        On a GPU bigger batches nearly always pay; on a CPU it depends on the model and the
        cores (a batch can cost more per clip than one clip alone), so it is measured: a few
        seconds at the first start, then read from the cache.
        """
        opts = self.options
        cache = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
        model = Path(opts.model)
        costs = load_batch_costs(cache, model, provider, opts.threads)
        if costs is None or costs.limit < limit:
            costs = measure_batch_costs(
                Runner(session, contract, provider, max_batch=limit), batch_candidates(limit)
            )
            save_batch_costs(cache, model, costs, opts.threads)
        costs = costs.up_to(limit)
        chosen = costs.cheapest()
        self.say(
            f"batch cost on {provider}{' (cached)' if costs.cached else ''}: {costs.describe()}; "
            f"the cheapest per clip is {chosen}"
        )
        return chosen

    def _open_sources(self) -> None:
        opts = self.options
        for named in self.named:
            source = open_source(
                named.spec,
                fps=opts.fps,
                reconnect=opts.reconnect,
                timeout_s=opts.timeout_s,
                transport=opts.rtsp_transport,
            )
            self._sources.append(source)

    def _build(
        self,
        runner: Runner,
        contract,
        records: dict[str, Path],
        writer: EventWriter,
        window: GridWindow,
    ) -> None:
        opts = self.options
        scheduler = self.scheduler = InferenceScheduler(
            runner, contract, self.stopper, batch_wait_s=opts.batch_wait_ms / 1000.0
        )
        names = [n.name for n in self.named]
        model_name = Path(opts.model).name
        if len(names) == 1:
            source = self._sources[0]
            console = LiveConsole(
                source.name,
                model_name,
                runner.provider,
                None if (source.is_live or opts.realtime) else source.frame_count,
                contract.class_names,
                console=self.console,
            )
        else:
            console = StreamsConsole(names, model_name, runner.provider, console=self.console)
        self._console = console
        budget = DISPLAY_BUDGET_BYTES // len(names)
        max_rate = opts.max_rate
        if max_rate is None and runner.provider == "CPUExecutionProvider":
            max_rate = CPU_MAX_RATE
        for k, (named, source) in enumerate(zip(self.named, self._sources, strict=True)):
            plan = plan_channel(
                source, contract, realtime=opts.realtime, every=opts.every, display_budget=budget
            )
            width, height = source.frame_size
            what = (f"{source.frame_count} frames" if source.frame_count else "live") + (
                f" at {source.fps:g} fps" if source.fps else ""
            )
            how = (
                f"every frame, a prediction every {plan.every} frames"
                if not plan.mode.is_live
                else "in real time (frames may drop)"
                if not source.is_live
                else "live"
            )
            prefix = f"stream {named.name}: " if len(names) > 1 else ""
            self.say(f"{prefix}source {source.name} ({what}) {width}x{height}: {how}")
            sinks = []
            if named.name in records:
                # A live stream with timestamps is recorded at its stated rate: measured, it would
                # count the frames that its first burst made the presenter drop.
                timed = plan.mode is CaptureMode.LIVE and source.time_base is TimeBase.PRESENTATION
                fps = source.fps if timed or not plan.mode.is_live else None
                sinks.append(RecorderSink(VideoRecorder(records[named.name], fps=fps)))
            if window.enabled:
                sinks.append(window.tiles[k])
            if self.web_view is not None:
                sinks.append(WebSink(self.web_view, named.name))
            sinks.append(EventsSink(EventLog(writer, contract.class_names, stream=named.name)))
            smoother = make_smoother(
                opts.smoothing,
                contract.class_names,
                alpha=opts.alpha,
                window=opts.window,
                min_score=opts.min_score,
                tau_s=opts.tau_s,
                window_s=opts.window_s,
            )
            channel = StreamChannel(
                named.name,
                source,
                contract,
                plan,
                smoother=smoother,
                sinks=sinks,
                stopper=self.stopper,
                doorbell=scheduler.ring,
                console_view=console.view_for(named.name),
                top_k=opts.top_k,
                max_rate=max_rate,
                trace_clips=opts.trace_clips,
            )
            self.channels.append(channel)
            scheduler.add(channel.lane)

    def _run(self, guard: SignalGuard) -> dict[str, Any]:
        opts = self.options
        records = self._check_outputs()
        if opts.serve is not None:  # a port in use is refused before the model loads, too
            self.web_view = self._start_web_view()
        runner, contract = self._open_model()
        self._open_sources()
        writer = EventWriter.open(opts.events)
        if self.web_view is not None:  # every events line goes to the page too
            writer.listener = self.web_view.publish
        window = GridWindow(opts.display, len(self.named), self.say)
        failure: BaseException | None = None
        try:
            self._build(runner, contract, records, writer, window)
            self._console.start()
            for channel in self.channels:
                channel.start()
            self.scheduler.start()
            self._watch(window, writer, guard)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            guard.finalizing = True
            self._shutdown(runner, failure)
            try:
                writer.close()
            finally:
                self._console_stop()
                window.close()
            for summary in self.summaries:
                print_summary(summary, self.console)
        error = self._first_error()
        if error is not None:
            raise error
        return self.summary

    def _console_stop(self) -> None:
        console = getattr(self, "_console", None)
        if console is not None:
            console.stop()

    def _stats_every(self, channel: StreamChannel) -> float:
        every = self.options.stats_every
        if every is None:
            return LIVE_STATS_EVERY_S if channel.plan.mode.is_live else 0.0
        return every

    def _watch(self, window: GridWindow, writer: EventWriter, guard: SignalGuard) -> None:
        """The main thread's part: the window, SIGHUP, stats lines, and noticing the end or a
        shared failure."""
        hangups = 0
        periods = {channel.name: self._stats_every(channel) for channel in self.channels}
        next_stats = {}
        for channel in self.channels:
            if periods[channel.name]:
                channel.write_stats(writer)  # starts the first period
                next_stats[channel.name] = time.monotonic() + periods[channel.name]
        while any(channel.running for channel in self.channels):
            if guard.hangups != hangups:
                hangups = guard.hangups
                writer.reopen()
                log.info("SIGHUP: reopened %s", writer.path)
            now = time.monotonic()
            for channel in self.channels:
                channel.check_stall(now, self.options.stall_s)
                due = next_stats.get(channel.name)
                if due is not None and now >= due and channel.running:
                    channel.write_stats(writer, now)
                    next_stats[channel.name] = due + periods[channel.name]
            if not window.refresh():
                for channel in self.channels:
                    channel.ended_by = "quit by the user"
                self.stopper.stop("quit by the user")
                return
            if self.stopper.is_set():
                return  # a shared failure (re-raised once every stream is finalized)
            self.stopper.event.wait(WATCH_S)
        window.refresh()

    def _shutdown(self, runner: Runner, failure: BaseException | None) -> None:
        """Stop what must stop, await what may finish, finalize every stream's outputs."""
        scheduler = self.scheduler
        interrupted = failure is not None or self.stopper.is_set()
        if interrupted:
            if self.stopper.reason is None:
                reason = (
                    "SIGINT"
                    if isinstance(failure, KeyboardInterrupt)
                    and not isinstance(failure, Interrupted)
                    else f"error: {type(failure).__name__}"
                    if failure is not None
                    else "stopped"
                )
                self.stopper.stop(reason)
            runner.cancel()  # a slow model's run in progress need not finish
        for channel in self.channels:
            channel.join(FINISH_TIMEOUT_S)
        if scheduler is not None and scheduler.is_alive():
            if not interrupted:
                # Every stream has ended; anything the scheduler still runs nobody will read.
                self.stopper.stop("end of stream")
                runner.cancel()
            scheduler.join(SCHEDULER_JOIN_S)
            if scheduler.is_alive():
                log.warning("%s did not stop within %.0f s", scheduler.name, SCHEDULER_JOIN_S)
        self.summaries = [channel.summary for channel in self.channels if channel.summary]

    def _first_error(self) -> BaseException | None:
        if self.scheduler is not None and self.scheduler.error is not None:
            return self.scheduler.error
        for channel in self.channels:
            if channel.error is not None:
                return channel.error
        return None


def run_streams(options: StreamOptions, console: Console | None = None) -> list[dict[str, Any]]:
    """Run ``options`` and return every stream's summary (a convenience for scripts and tests)."""
    pipeline = StreamPipeline(options, console=console)
    pipeline.run()
    return pipeline.summaries


def summaries_by_stream(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {summary.get("stream", ""): summary for summary in summaries}
