"""Measure (not assert) the stream's figures: file-mode overhead and realtime latency.

    python tests/measure_stream.py [--seconds 10] [--size 640x360] [--threads 0]

* Overhead: the wall time of a file stream (threads started -> last frame presented, recording
  on) against the pure ``session.run`` time of the same number of predictions of the same model,
  run back to back. 1.00 would mean decoding, resizing, overlay and encoding are entirely hidden
  behind inference. Start-up (model load, source open) is excluded from both.
* Realtime: the same kind of video played with --realtime and a slow model; the latency
  percentiles from capture of a clip's newest frame to its result.

Not collected by pytest: it takes tens of seconds and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import write_video
from onnx_models import matmul_model

from stream.pipeline import StreamOptions, StreamPipeline
from stream.runtime import create_session


def pure_run_ms(model: Path, runs: int, threads: int) -> float:
    session, contract, _ = create_session(model, "cpu", threads)
    size, t = contract.image_size, contract.num_frames
    clip = np.random.default_rng(0).integers(0, 255, (1, t, size, size, 3), dtype=np.uint8)
    session.run(None, {"frames": clip})
    start = time.perf_counter()
    for _ in range(runs):
        session.run(["scores"], {"frames": clip})
    return (time.perf_counter() - start) * 1000.0


def calibrate(tmp: Path, target_ms: float, threads: int) -> Path:
    """A matmul model whose run takes about ``target_ms`` here."""
    probe = matmul_model(tmp / "probe.onnx", size=256, depth=8, image_size=112, num_frames=8)
    per_layer = pure_run_ms(probe, 10, threads) / 10 / 8
    depth = max(1, round(target_ms / per_layer))
    return matmul_model(
        tmp / f"cost{target_ms:.0f}.onnx", size=256, depth=depth, image_size=112, num_frames=8
    )


def stream_once(video: Path, model: Path, tmp: Path, *, realtime: bool, threads: int) -> dict:
    options = StreamOptions(
        source=str(video),
        model=model,
        record=tmp / "out.mp4",
        display=False,
        realtime=realtime,
        threads=threads,
    )
    return StreamPipeline(options, console=Console(file=io.StringIO())).run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cost-ms", type=float, default=30.0)
    parser.add_argument("--slow-ms", type=float, default=150.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(f"onnxruntime {ort.__version__}, threads={args.threads or 'default'}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        frames = int(args.seconds * args.fps)
        rng = np.random.default_rng(1)
        # Textured frames: flat ones would make decoding and encoding unrealistically cheap.
        base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        images = [np.roll(base, 4 * i, axis=1) for i in range(frames)]
        video = write_video(tmp / "v.mp4", images, args.fps)
        del images

        model = calibrate(tmp, args.cost_ms, args.threads)
        stream_once(video, model, tmp, realtime=False, threads=args.threads)  # warm caches
        walls, pures, inner = [], [], []
        for _ in range(args.repeats):  # interleaved, best of: other load on the machine only adds
            summary = stream_once(video, model, tmp, realtime=False, threads=args.threads)
            walls.append(summary["wall_s"] * 1000.0)
            inner.append(summary["inference_ms_mean"] * summary["predictions"])
            pures.append(pure_run_ms(model, summary["predictions"], args.threads))
        wall, pure = min(walls), min(pures)
        print(
            f"file mode: {summary['frames']} frames {width}x{height} at {args.fps:g} fps, "
            f"{summary['predictions']} predictions (every {summary['every']}), "
            f"pure run {pure / summary['predictions']:.1f} ms each"
        )
        print(
            f"  stream wall {wall:.0f} ms vs pure session.run {pure:.0f} ms "
            f"-> overhead ratio {wall / pure:.3f} (best of {args.repeats}; all: "
            + ", ".join(f"{w / p:.2f}" for w, p in zip(walls, pures, strict=True))
            + f"); wall vs the stream's own run time: {wall / inner[walls.index(wall)]:.3f}"
        )

        slow = calibrate(tmp, args.slow_ms, args.threads)
        summary = stream_once(video, slow, tmp, realtime=True, threads=args.threads)
        print(
            f"realtime, slow model (inference mean {summary['inference_ms_mean']:.0f} ms): "
            f"latency p50 {summary['latency_ms_p50']:.0f} ms, p95 {summary['latency_ms_p95']:.0f} ms, "
            f"{summary['predictions']} predictions, {summary['frames']} frames presented, "
            f"{summary['dropped_frames']} dropped"
        )


if __name__ == "__main__":
    main()
