"""epic-export: a TimeSformer checkpoint to a verified ONNX file under the epic-stream model contract."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from export.calibration import DEFAULT_CLIPS
from export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, Precision
from export.triton import DEFAULT_QUEUE_DELAY_US, InstanceKind
from stream.errors import EpicError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epic-export",
        description="Export a TimeSformer checkpoint (epic-train .ckpt, official .pyth, or a state "
        "dict) to one ONNX file that epic-stream runs: uint8 BGR frames in, softmax scores out.",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="the .ckpt, .pyth or state-dict file"
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument(
        "--class-names",
        metavar="FILE",
        help="JSON dict name->id, JSON list, or text with one name a line "
        "(default: the names epic-train stored; else class_0 ...)",
    )
    parser.add_argument(
        "--num-frames", type=int, metavar="T", help="frames per clip (default: the checkpoint's)"
    )
    parser.add_argument(
        "--image-size", type=int, metavar="S", help="frame size S (default: the checkpoint's)"
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        metavar="H",
        help="attention heads, which the weights cannot show (default: as stored by epic-train; "
        "else embed dim / 64, as every TimeSformer and ViT preset)",
    )
    parser.add_argument(
        "--clip-seconds",
        type=float,
        metavar="X",
        help="source time from a clip's first frame to its last (default: as stored by epic-train; "
        "else the reference's 8x32 sampling at 30 fps)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16",
        action="store_const",
        dest="precision",
        const=Precision.FP16,
        help="write a float16 model (for GPUs)",
    )
    precision.add_argument(
        "--int8",
        action="store_const",
        dest="precision",
        const=Precision.INT8,
        help="write an int8 model for CPUs: dynamic, or static with --calibration",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="with --int8: static int8, its activation ranges measured on clips sampled from "
        "DIR (videos or frame folders like the ones the model will see); prints how often int8 "
        "agrees with fp32 on them",
    )
    parser.add_argument(
        "--calibration-clips",
        type=int,
        default=DEFAULT_CLIPS,
        metavar="N",
        help=f"clips to sample from --calibration DIR (default {DEFAULT_CLIPS})",
    )
    parser.add_argument(
        "--mean",
        type=float,
        nargs="+",
        metavar="M",
        help="RGB mean, one value or three (default: stored, else 0.45)",
    )
    parser.add_argument(
        "--std",
        type=float,
        nargs="+",
        metavar="S",
        help="RGB std, one value or three (default: stored, else 0.225)",
    )
    parser.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton model repository: DIR/NAME/1/model.onnx, config.pbtxt",
    )
    parser.add_argument(
        "--name", help="the model's name in the Triton repository (default: output stem)"
    )
    parser.add_argument(
        "--triton-max-batch",
        type=int,
        default=8,
        metavar="N",
        help="Triton max_batch_size (default 8); the dynamic batcher prefers N/2 and N",
    )
    parser.add_argument(
        "--triton-queue-delay-us",
        type=int,
        default=DEFAULT_QUEUE_DELAY_US,
        metavar="US",
        help="how long a request may wait for others to batch with "
        f"(default {DEFAULT_QUEUE_DELAY_US} us)",
    )
    parser.add_argument(
        "--triton-instance",
        choices=[k.value for k in InstanceKind],
        default="gpu",
        help="where the model instance runs: gpu (KIND_GPU, default) or cpu (KIND_CPU, "
        "for a server without a GPU)",
    )
    parser.add_argument(
        "--triton-tensorrt",
        action="store_true",
        help="let the server's ONNX Runtime run the model through TensorRT in fp16 "
        "(GPU servers; the first load builds the engine)",
    )
    parser.add_argument(
        "--check-clips",
        type=int,
        default=3,
        metavar="N",
        help="random clips to compare ONNX Runtime with torch on, at least 3 (default 3)",
    )
    parser.add_argument(
        "--timing-runs",
        type=int,
        default=5,
        metavar="N",
        help="ONNX Runtime runs to time, median reported (default 5)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.set_defaults(precision=Precision.FP32)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
    )
    status = {"now": None, "text": ""}

    @contextlib.contextmanager
    def step(message: str):
        with err.status(message) as shown:
            status["now"], status["text"] = shown, message
            try:
                yield shown
            finally:
                status["now"] = None

    def progress(what: str, done: int, total: int) -> None:
        if status["now"] is not None:
            status["now"].update(f"{status['text']}: {what} {done}/{total}")

    try:
        # Imported here so --help and option errors answer before torch loads.
        from export.checkpoint import export_checkpoint
        from export.report import render_report

        report = export_checkpoint(
            args.checkpoint,
            args.output,
            class_names_file=args.class_names,
            num_frames=args.num_frames,
            image_size=args.image_size,
            num_heads=args.num_heads,
            clip_seconds=args.clip_seconds,
            mean=args.mean,
            std=args.std,
            opset=args.opset,
            precision=args.precision,
            triton_repo=args.triton_repo,
            name=args.name,
            triton_max_batch_size=args.triton_max_batch,
            triton_instance=args.triton_instance,
            triton_tensorrt=args.triton_tensorrt,
            triton_queue_delay_us=args.triton_queue_delay_us,
            check_clips=args.check_clips,
            timing_runs=args.timing_runs,
            calibration=args.calibration,
            calibration_clips=args.calibration_clips,
            step=step,
            progress=progress,
        )
    except EpicError as exc:
        if args.debug:
            raise
        print(f"epic-export: error: {exc}", file=sys.stderr)
        return exc.exit_code
    Console().print(render_report(report))
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
