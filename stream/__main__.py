"""epic-stream: classify the actions in a video stream, live, with any contract-meeting ONNX model.

    epic-stream --source webcam
    epic-stream --source kitchen.mp4 --model model.onnx --record out.mp4 --events out.jsonl
    epic-stream --source rtsp://camera/stream --no-display --events live.jsonl
    epic-stream --source door=rtsp://cam1/s --source till=rtsp://cam2/s --record 'out/{stream}.mp4'

Errors the user can fix end in one line on stderr and a non-zero exit code (``--debug`` shows the
traceback). Ctrl-C and SIGTERM stop cleanly, with the recording and the events file finalized,
and exit with 130 and 143.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

import stream
from stream.errors import EpicError, ModelError, OptionError
from stream.events import STDOUT
from stream.recorder import CODECS
from stream.runtime import Device
from stream.scheduler import DEFAULT_BATCH_WAIT_MS
from stream.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_HYSTERESIS_WINDOW,
    DEFAULT_HYSTERESIS_WINDOW_S,
    DEFAULT_TAU_S,
    DEFAULT_WINDOW,
    DEFAULT_WINDOW_S,
    MIN_SCORE_MARGIN,
    SmoothingPolicy,
)
from stream.source import (
    DEFAULT_FOLDER_FPS,
    DEFAULT_RECONNECTS,
    DEFAULT_STALL_S,
    DEFAULT_TIMEOUT_S,
    RtspTransport,
)
from stream.triton_client import DEFAULT_SERVER_TIMEOUT_S
from stream.webview import DEFAULT_SERVE_FPS, parse_serve_address

PROG = "epic-stream"
# Package data (pyproject.toml): installed with the package, found without a checkout.
DEMO_MODEL = Path(stream.__file__).resolve().parent / "models" / "demo.onnx"


class _Parser(argparse.ArgumentParser):
    """Usage errors become an :class:`OptionError`: one line, through the one error boundary."""

    def error(self, message: str):
        raise OptionError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Real-time action classification of a camera, video file, network stream or "
        "folder of frames, with an ONNX model that meets the epic-stream contract.",
        epilog="q or Esc in the window quits; Ctrl-C or SIGTERM stop cleanly, finalizing the "
        "recording and the events file.",
    )
    parser.add_argument(
        "--source",
        required=True,
        action="append",
        metavar="[NAME=]SRC",
        help="webcam (camera 0), webcam:N or N; a video file; an rtsp://, http:// or https:// URL "
        "(IP cameras, MJPEG streams); a folder of frames (EPIC-KITCHENS frame_0000000001.jpg "
        "style, in sorted order) or a glob such as 'frames/*.jpg'. Give it several times for "
        "several streams in one process, sharing one model session; NAME=SRC names a stream "
        "(letters, digits, _ . -), else it is named after its file, camera or host",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="MODEL.onnx",
        help=f"the ONNX model (default: the demo model, {DEMO_MODEL.relative_to(DEMO_MODEL.parents[2])})",
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="OUT.mp4",
        help="write the annotated video: every presented frame at the source size, each at its "
        f"source time (H.264; .avi: Motion JPEG at the source's rate, or for a live source the "
        f"rate a stream with timestamps states, else measured); {', '.join(sorted(CODECS))}. "
        "With several streams the path must contain {stream}, e.g. 'out/{stream}.mp4'",
    )
    parser.add_argument(
        "--events",
        type=Path,
        metavar="OUT.jsonl",
        help="write the events as JSON lines: predictions, segments as they close, stats, then a "
        "summary line per stream (every line names its stream); '-' writes them to stdout (all "
        "other output then goes to stderr); SIGHUP reopens the file (logrotate)",
    )
    parser.add_argument(
        "--no-display",
        dest="display",
        action="store_false",
        help="never open a window (without a display the run is headless anyway)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="treat a file as a live camera: paced at its native frame rate, frames dropped when "
        "the machine falls behind, the model always on the newest clip",
    )
    smoothing = parser.add_argument_group("smoothing of the shown label")
    smoothing.add_argument(
        "--smoothing",
        choices=[p.value for p in SmoothingPolicy],
        default=SmoothingPolicy.EMA.value,
        help="ema: moving average of the scores; vote: majority of the last --window labels; "
        "hysteresis: change only when the last --window labels agree; none (default: ema)",
    )
    smoothing.add_argument(
        "--tau",
        type=float,
        metavar="SECONDS",
        dest="tau_s",
        help=f"ema: time constant in seconds of video; each prediction weighs 1 - exp(-dt/tau), "
        f"so the label behaves alike at any prediction rate (default {DEFAULT_TAU_S:g})",
    )
    smoothing.add_argument(
        "--alpha",
        type=float,
        help="ema: a fixed weight of the newest prediction, in (0, 1], instead of --tau (counts "
        f"predictions; {DEFAULT_ALPHA} at 4 predictions/s is the default --tau's feel)",
    )
    smoothing.add_argument(
        "--window-s",
        type=float,
        metavar="SECONDS",
        dest="window_s",
        help=f"vote and hysteresis: the window in seconds of video (default {DEFAULT_WINDOW_S:g} "
        f"for vote, {DEFAULT_HYSTERESIS_WINDOW_S:g} for hysteresis)",
    )
    smoothing.add_argument(
        "--window",
        type=int,
        help=f"vote and hysteresis: the window in predictions instead of seconds (e.g. "
        f"{DEFAULT_WINDOW} for vote, {DEFAULT_HYSTERESIS_WINDOW} for hysteresis: the defaults' "
        "feel at 4 predictions/s)",
    )
    smoothing.add_argument(
        "--min-score",
        type=float,
        help="below this score the label shows 'no action' (default: just above chance, 1/C plus "
        f"{MIN_SCORE_MARGIN * 100:g}%% of the way to 1, so a confident prediction is never hidden)",
    )
    parser.add_argument(
        "--every",
        type=int,
        metavar="N",
        help="files: one prediction every N frames (default: about 4 per second of video, "
        "e.g. 8 at 30 fps, 15 at 60 fps)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=5,
        metavar="K",
        help="classes in the overlay's bar chart (default 5)",
    )
    parser.add_argument(
        "--device",
        choices=[d.value for d in Device],
        default=Device.AUTO.value,
        help="execution provider: auto tries TensorRT, then CUDA, then the CPU and keeps the first "
        "that really works (default: auto)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where TensorRT engines (one folder per model; the first start on a GPU builds "
        "one, which takes minutes) and measured batch costs are cached (default: "
        "$XDG_CACHE_HOME or ~/.cache, "
        "then epic-stream/tensorrt)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="ONNX Runtime intra-op threads (default 0: its own choice)",
    )
    parser.add_argument(
        "--reconnect",
        type=int,
        default=DEFAULT_RECONNECTS,
        metavar="N",
        help="live sources: when the stream drops, try to reopen it up to N times, with backoff "
        f"(default {DEFAULT_RECONNECTS})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="URLs: seconds to wait for a connection and for each frame, on the first connect and "
        f"on every reconnect, before the stream counts as down (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--rtsp-transport",
        choices=[t.value for t in RtspTransport],
        default=RtspTransport.TCP.value,
        help="rtsp:// URLs: carry the video over tcp (default; UDP smears frames on lossy "
        "networks) or udp",
    )
    parser.add_argument(
        "--fps",
        type=float,
        help=f"frame rate of a folder of frames (default {DEFAULT_FOLDER_FPS:g}; EPIC-KITCHENS-55 "
        "and EPIC-KITCHENS-100 frames are 60 fps), or of a video file that states none; a file "
        "that states a rate keeps it (a different --fps is ignored with a warning)",
    )
    batching = parser.add_argument_group("batching (several streams share one model session)")
    batching.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="the most clips in one model run (default: of the sizes up to the number of "
        "streams, the one the model runs cheapest per clip on this device, measured at the first "
        "start and cached)",
    )
    batching.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_BATCH_WAIT_MS,
        metavar="W",
        help="once one stream's clip is ready, wait at most W ms for the others' before running "
        f"the batch (default {DEFAULT_BATCH_WAIT_MS:g})",
    )
    parser.add_argument(
        "--max-rate",
        type=float,
        metavar="R",
        help="live streams: at most R predictions a second each (default: 8 on the CPU, no cap "
        "on a GPU)",
    )
    parser.add_argument(
        "--stats-every",
        type=float,
        metavar="SECONDS",
        help="write a stats line per stream every SECONDS (capture fps, predictions, latency "
        "p50/p95, drops over the period); default 60 for live streams, none for files; 0: none",
    )
    server = parser.add_argument_group("inference on a Triton Inference Server")
    server.add_argument(
        "--server",
        metavar="grpc://HOST:PORT[/MODEL]",
        help="send the clips to a Triton server (grpc:// or http://) instead of running --model "
        "here; --model still gives the contract, which the server's model must match. MODEL "
        "defaults to --model's file stem, the name epic-export --triton-repo gives it",
    )
    server.add_argument(
        "--server-timeout",
        type=float,
        default=DEFAULT_SERVER_TIMEOUT_S,
        metavar="S",
        help="seconds each request may take before the server counts as lost "
        f"(default {DEFAULT_SERVER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=DEFAULT_STALL_S,
        metavar="SECONDS",
        help="live streams: no frame for this long is reported as a 'stalled' source event "
        f"(default {DEFAULT_STALL_S:g})",
    )
    serve = parser.add_argument_group("live view in the browser")
    serve.add_argument(
        "--serve",
        type=parse_serve_address,
        metavar="[HOST:]PORT",
        help="serve a live page: each stream's annotated video, label and timeline (HOST default "
        "127.0.0.1; another host needs --serve-token)",
    )
    serve.add_argument(
        "--serve-token",
        metavar="TOKEN",
        help="every request must carry it: Authorization: Bearer TOKEN, or ?token=TOKEN",
    )
    serve.add_argument(
        "--serve-fps",
        type=float,
        default=DEFAULT_SERVE_FPS,
        metavar="N",
        help=f"at most N video frames a second per stream (default {DEFAULT_SERVE_FPS:g})",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {stream.__version__}")
    return parser


class _CliFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (it may be replaced later)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_CliFormatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("stream")
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    if not debug:
        # OpenCV and FFmpeg report a failed open on stderr in many lines; our one line says it.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _model_path(given: Path | None) -> tuple[Path, bool]:
    if given is not None:
        return given, False
    if not DEMO_MODEL.is_file():
        raise ModelError(
            f"no --model given and the demo model {DEMO_MODEL} is missing; run `make demo-model` "
            "or pass --model"
        )
    return DEMO_MODEL, True


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (tests call this directly)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args.debug)
        from stream.pipeline import StreamOptions, StreamPipeline

        model, is_demo = _model_path(args.model)
        options = StreamOptions(
            source=tuple(args.source),
            model=model,
            record=args.record,
            events=args.events,
            display=args.display,
            realtime=args.realtime,
            smoothing=SmoothingPolicy(args.smoothing),
            alpha=args.alpha,
            tau_s=args.tau_s,
            window_s=args.window_s,
            window=args.window,
            min_score=args.min_score,
            every=args.every,
            top_k=args.top_k,
            device=Device(args.device),
            threads=args.threads,
            reconnect=args.reconnect,
            fps=args.fps,
            batch=args.batch,
            batch_wait_ms=args.batch_wait_ms,
            max_rate=args.max_rate,
            stats_every=args.stats_every,
            stall_s=args.stall_s,
            server=args.server,
            server_timeout_s=args.server_timeout,
            timeout_s=args.timeout,
            rtsp_transport=RtspTransport(args.rtsp_transport),
            serve=args.serve,
            serve_token=args.serve_token,
            serve_fps=args.serve_fps,
            cache_dir=args.cache_dir,
        )
        # With --events - the events own stdout: everything for people goes to stderr.
        console = Console(stderr=True) if str(args.events) == STDOUT else None
        pipeline = StreamPipeline(options, console=console)
        if is_demo:
            pipeline.say(f"no --model given: using the demo model {model}")
        pipeline.run()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into Interrupted
        code = getattr(exc, "exit_code", 130)
        print(f"{PROG}: stopped by {exc or 'SIGINT'}; outputs finalized", file=sys.stderr)
        return code
    except EpicError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
