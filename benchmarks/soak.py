"""Soak: a long realtime stream, its resident memory, open file descriptors and threads sampled
every second, judged on what happens after the warm-up: nothing may grow.

``run_soak(duration_s)`` runs ``python -m stream`` on a synthetic ``--realtime`` video (a
textured, moving 30 fps picture) with ``--record`` and ``--events``, as a user would leave it
running unattended. This process samples the child with psutil, then stops it with SIGINT at
``duration_s``, so every sample is of a streaming process, never of one starting or finalizing,
and the run ends through the same path as Ctrl-C.

``make test`` runs 60 s (tests/test_reliability_soak.py); the benchmark runs ``duration_s=600``.
``python -m benchmarks.soak --duration 600`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
DEFAULT_WARMUP_S = 15.0
# Judged after the warm-up. A leak of one 320x240 frame a second (225 KiB/s) grows 10 MiB over
# the 45 judged seconds of the 60 s test; allocator noise stays well under this.
RSS_GROWTH_LIMIT_MIB = 8.0
STARTUP_SLACK_S = 20.0  # video beyond duration_s, so the stream is still running when stopped


@dataclass(frozen=True)
class SoakSample:
    t_s: float  # since the child started
    rss_mib: float
    fds: int
    threads: int


@dataclass(frozen=True)
class SoakResult:
    """Samples of one soak run; the properties describe the samples after the warm-up."""

    duration_s: float
    warmup_s: float
    samples: tuple[SoakSample, ...]
    returncode: int
    summary: dict | None  # the events file's summary line
    stderr_tail: str

    @property
    def judged(self) -> tuple[SoakSample, ...]:
        return tuple(s for s in self.samples if s.t_s >= self.warmup_s)

    @property
    def rss_start_mib(self) -> float:
        return self.judged[0].rss_mib

    @property
    def rss_end_mib(self) -> float:
        return self.judged[-1].rss_mib

    @property
    def rss_max_mib(self) -> float:
        return max(s.rss_mib for s in self.judged)

    @property
    def rss_min_mib(self) -> float:
        return min(s.rss_mib for s in self.judged)

    @property
    def rss_slope_mib_per_min(self) -> float:
        """Least-squares slope of RSS over the judged samples."""
        t = np.array([s.t_s for s in self.judged])
        rss = np.array([s.rss_mib for s in self.judged])
        return float(np.polyfit(t, rss, 1)[0]) * 60.0

    @property
    def rss_growth_mib(self) -> float:
        """What the fitted trend adds over the judged span."""
        judged = self.judged
        return self.rss_slope_mib_per_min / 60.0 * (judged[-1].t_s - judged[0].t_s)

    @property
    def fds(self) -> tuple[int, int]:
        return min(s.fds for s in self.judged), max(s.fds for s in self.judged)

    @property
    def threads(self) -> tuple[int, int]:
        return min(s.threads for s in self.judged), max(s.threads for s in self.judged)

    def problems(self, rss_growth_limit_mib: float = RSS_GROWTH_LIMIT_MIB) -> list[str]:
        """What grew after the warm-up (empty: nothing)."""
        found = []
        if len(self.judged) < 10:
            return [f"only {len(self.judged)} samples after the {self.warmup_s:g} s warm-up"]
        if self.fds[0] != self.fds[1]:
            found.append(f"open file descriptors went from {self.fds[0]} to {self.fds[1]}")
        if self.threads[0] != self.threads[1]:
            found.append(f"threads went from {self.threads[0]} to {self.threads[1]}")
        if self.rss_growth_mib > rss_growth_limit_mib:
            found.append(
                f"RSS grew {self.rss_growth_mib:.1f} MiB along its trend "
                f"({self.rss_slope_mib_per_min:+.2f} MiB/min)"
            )
        if self.rss_max_mib - self.rss_start_mib > 2 * rss_growth_limit_mib:
            found.append(
                f"RSS peaked {self.rss_max_mib - self.rss_start_mib:.1f} MiB above its "
                "post-warm-up start"
            )
        return found

    def figures(self) -> str:
        return (
            f"{len(self.judged)} samples after a {self.warmup_s:g} s warm-up of a "
            f"{self.duration_s:g} s soak: RSS start {self.rss_start_mib:.1f} MiB, end "
            f"{self.rss_end_mib:.1f}, min {self.rss_min_mib:.1f}, max {self.rss_max_mib:.1f}, "
            f"trend {self.rss_slope_mib_per_min:+.3f} MiB/min; fds {self.fds[0]}-{self.fds[1]}; "
            f"threads {self.threads[0]}-{self.threads[1]}"
        )


def synthetic_video(
    path: Path, seconds: float, size: tuple[int, int] = (320, 240), fps: float = 30.0
) -> Path:
    """A textured picture panning sideways with a red block crossing it: every frame differs,
    so decoding, the model and the recording's encoder all do real work."""
    width, height = size
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(
        rng.integers(0, 256, (height, 2 * width, 3), dtype=np.uint8), (0, 0), 3
    )
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    block = max(8, height // 6)
    for i in range(round(seconds * fps)):
        x = (4 * i) % width
        frame = np.ascontiguousarray(texture[:, x : x + width])
        left = (7 * i) % (width - block)
        cv2.rectangle(
            frame,
            (left, height // 2 - block // 2),
            (left + block, height // 2 + block // 2),
            (0, 0, 255),
            -1,
        )
        writer.write(frame)
    writer.release()
    return path


def soak_model(
    path: Path,
    *,
    num_frames: int = 8,
    image_size: int = 64,
    classes: int = 10,
    clip_seconds: float = 1.0,
) -> Path:
    """A small model under the epic-stream contract: per-frame colour means through a linear
    layer and a softmax (a few microseconds a clip; the soak is about the pipeline)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    frames = helper.make_tensor_value_info(
        "frames", TensorProto.UINT8, ["batch", num_frames, image_size, image_size, 3]
    )
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])
    weights = np.random.default_rng(1).standard_normal((num_frames * 3, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["means"], axes=[2, 3], keepdims=0),  # [b, T, 3]
        helper.make_node("Flatten", ["means"], ["flat"], axis=1),  # [b, 3T]
        helper.make_node("Div", ["flat", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "soak", [frames], [scores], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    meta = {
        "class_names": json.dumps([f"action {i}" for i in range(classes)]),
        "clip_seconds": repr(float(clip_seconds)),
        "num_frames": str(num_frames),
        "image_size": str(image_size),
        "description": "soak test model",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_soak(
    duration_s: float,
    *,
    workdir: Path | None = None,
    warmup_s: float = DEFAULT_WARMUP_S,
    size: tuple[int, int] = (320, 240),
    fps: float = 30.0,
    model: Path | None = None,
    period_s: float = 1.0,
    extra_args: Sequence[str] = (),
    progress=None,
) -> SoakResult:
    """Stream a synthetic realtime video for ``duration_s`` seconds, sampling the process.

    ``workdir`` holds the video, model, recording and events (a temporary folder by default);
    ``model`` replaces the built-in small one; ``progress(sample)`` is called after each sample.
    """
    import psutil

    with tempfile.TemporaryDirectory(prefix="epic-soak-") as scratch:
        work = Path(workdir) if workdir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        video = synthetic_video(work / "soak.mp4", duration_s + STARTUP_SLACK_S, size, fps)
        model = model or soak_model(work / "soak.onnx")
        events = work / "soak.jsonl"
        argv = [
            sys.executable,
            "-m",
            "stream",
            "--source",
            str(video),
            "--model",
            str(model),
            "--realtime",
            "--record",
            str(work / "soak-out.mp4"),
            "--events",
            str(events),
            "--no-display",
            *extra_args,
        ]
        samples: list[SoakSample] = []
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            child = psutil.Process(proc.pid)
            start = time.monotonic()
            next_at = start
            while proc.poll() is None and time.monotonic() - start < duration_s:
                try:
                    with child.oneshot():
                        sample = SoakSample(
                            time.monotonic() - start,
                            child.memory_info().rss / MIB,
                            child.num_fds(),
                            child.num_threads(),
                        )
                except psutil.NoSuchProcess:
                    break
                samples.append(sample)
                if progress is not None:
                    progress(sample)
                next_at += period_s
                time.sleep(max(0.0, next_at - time.monotonic()))
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        summary = None
        if events.exists():
            lines = events.read_text().splitlines()
            if lines:
                last = json.loads(lines[-1])
                summary = last if last.get("type") == "summary" else None
        return SoakResult(
            duration_s, warmup_s, tuple(samples), proc.returncode, summary, err[-2000:]
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds to stream (default 600)"
    )
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, help="seconds not judged")
    args = parser.parse_args(argv)

    def show(sample: SoakSample) -> None:
        print(
            f"{sample.t_s:6.0f} s  RSS {sample.rss_mib:7.1f} MiB  fds {sample.fds:3d}  "
            f"threads {sample.threads:3d}",
            flush=True,
        )

    result = run_soak(args.duration, warmup_s=args.warmup, progress=show)
    print(result.figures())
    problems = result.problems()
    for problem in problems:
        print(f"GREW: {problem}")
    return 0 if not problems and result.returncode == 130 else 1


if __name__ == "__main__":
    sys.exit(main())
