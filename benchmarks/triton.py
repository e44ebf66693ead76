"""(10) Triton: what the hop to an inference server costs, and several boxes sharing one server.

The server is the real tritonserver 2.51 that PyTriton bundles, CPU-only here, in the venv the
tests build (tests/triton_server.py; built on first use, about a minute and a half). Its bundled
server has no onnxruntime backend, so the model runs in ONNX Runtime inside Triton's Python
backend, on the batches Triton's dynamic batcher forms, with the config ``epic-export
--triton-repo --triton-instance cpu`` writes. On a GPU server the onnxruntime backend (or its
TensorRT accelerator) runs the model instead; no GPU is lent to this machine, so there are no GPU
figures here.

* **The hop.** The same cheap contract model (one dial layer, so that the model costs little and
  the transport shows) at 8x112 and 8x224, batch 1: ``session.run`` in this process against
  :class:`~stream.triton_client.TritonRunner` over gRPC to the server on 127.0.0.1. The
  difference is the cost of sending the clip (301 KB and 1.2 MB of uint8) and the answer through
  gRPC, Triton and its Python backend.
* **Boxes sharing a server.** 8 ``--realtime`` 640x480 streams with the demo model, all inference
  on the server: one epic-stream process with the 8 streams, against 4 processes with 2 streams
  each (4 "boxes"). From the events: predictions/s and p95 latency; from Triton's metrics: the
  requests, the clips and the model executions (fewer executions than requests: merged batches).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Bench,
    BenchError,
    SectionResult,
    Stats,
    Target,
    cpu_session,
    md_table,
    timed,
)
from benchmarks.footage import synthetic_video
from benchmarks.models import random_clip, write_dial
from benchmarks.multistream import _run, _summaries, demo_model
from export.triton import write_triton_repo
from stream.contract import load_contract
from stream.triton_client import open_triton

TITLE = (
    "10. Triton: the gRPC hop per clip, and 8 streams from one box or from four sharing the server"
)
FPS = 30.0
SIZE = (640, 480)


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    runs: int
    layout: tuple[tuple[int, int], ...]  # (processes, streams each)
    seconds: float
    video_size: tuple[int, int]


PLANS = {
    "smoke": Plan((32,), 4, ((1, 2), (2, 1)), 2.0, (160, 120)),
    "quick": Plan((112, 224), 30, ((1, 8), (4, 2)), 30.0, SIZE),
    "full": Plan((112, 224), 100, ((1, 8), (4, 2), (8, 1)), 60.0, SIZE),
}


def _server(bench: Bench, model: Path, name: str):
    # The tests' server helper: one definition of how the real server is built and started.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from triton_server import TritonServer

    contract = load_contract(model)
    model_dir = write_triton_repo(
        model,
        bench.work / "repo",
        name=name,
        num_frames=contract.num_frames,
        image_size=contract.image_size,
        class_names=contract.class_names,
        clip_seconds=contract.clip_seconds or 0.0,
        instance="cpu",
    )
    return TritonServer(model_dir, workdir=bench.work / f"server-{name}").start()


def _hop(bench: Bench, size: int, runs: int) -> tuple[Stats, Stats, int]:
    """Local and Triton ms per clip for the dial model at 8 x size; the server's executions."""
    model = write_dial(
        bench.work / f"dial-8x{size}.onnx", 1, num_frames=8, image_size=size, clip_seconds=1.0
    )
    clip = random_clip(8, size)
    session = cpu_session(model)
    feed = {"frames": clip}
    session.run(None, feed)
    local = Stats.of([timed(lambda: session.run(None, feed)) * 1000.0 for _ in range(runs)])
    server = _server(bench, model, model.stem)
    try:
        runner, _ = open_triton(f"grpc://127.0.0.1:{server.grpc_port}", model, batch=1)
        runner.clip[0] = clip
        expected = session.run(None, feed)[0]
        np.testing.assert_allclose(runner.run(1), expected, atol=1e-5)
        remote = Stats.of([runner.timed_run(1)[1] for _ in range(runs)])
        runner.close()
        executions = int(server.metrics()["nv_inference_exec_count"])
    finally:
        server.stop()
    return local, remote, executions


@dataclass(frozen=True)
class BoxesRun:
    processes: int
    streams: int  # each
    wall_s: float
    rss_mib_peak: float
    summaries: list[dict]
    requests: float
    clips: float
    executions: float

    @property
    def label(self) -> str:
        return (
            f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.streams} streams"
        )

    def median(self, key: str) -> float:
        return float(np.median([s[key] for s in self.summaries if s.get(key) is not None]))

    @property
    def total_predictions_per_s(self) -> float:
        return float(sum(s["predictions"] / s["wall_s"] for s in self.summaries))


def _boxes(
    bench: Bench, server, video: Path, processes: int, streams: int, seconds: float
) -> BoxesRun:
    model = demo_model()
    before = server.metrics()
    argvs, files = [], []
    for p in range(processes):
        events = bench.work / f"triton-{processes}x{streams}-{p}.jsonl"
        argv = [
            sys.executable,
            "-m",
            "stream",
            "--model",
            str(model),
            "--realtime",
            "--no-display",
            "--server",
            f"grpc://127.0.0.1:{server.grpc_port}",
            "--events",
            str(events),
        ]
        for s in range(streams):
            argv += ["--source", f"box{p}cam{s}={video}"]
        argvs.append(argv)
        files.append(events)
    wall, rss, _ = _run(argvs, timeout_s=seconds * 4 + 120)
    after = server.metrics()
    summaries = [s for f in files for s in _summaries(f)]
    if len(summaries) != processes * streams:
        raise BenchError(f"expected {processes * streams} summaries, got {len(summaries)}")

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    return BoxesRun(
        processes,
        streams,
        wall,
        rss,
        summaries,
        delta("nv_inference_request_success"),
        delta("nv_inference_count"),
        delta("nv_inference_exec_count"),
    )


def run(bench: Bench) -> SectionResult:
    plan = PLANS.get(bench.profile.name, PLANS["quick"])
    result = SectionResult("triton", TITLE)
    with bench.task(TITLE, len(plan.sizes) + len(plan.layout) + 1) as advance:
        hops = []
        for size in plan.sizes:
            advance(0, f"8x{size}: local session vs Triton")
            hops.append((size, *_hop(bench, size, plan.runs)))
            advance(1)
        advance(0, "encoding the video; starting the server with the demo model")
        video = synthetic_video(bench.cache, plan.seconds, plan.video_size, FPS)
        server = _server(bench, demo_model(), "demo")
        advance(1)
        boxes = []
        try:
            for processes, streams in plan.layout:
                advance(0, f"{processes} x {streams} streams on the server")
                boxes.append(_boxes(bench, server, video, processes, streams, plan.seconds))
                advance(1)
        finally:
            server.stop()

    hop_rows = [
        [
            f"8x{size}",
            f"{8 * size * size * 3 / 1e6:.2f} MB",
            local.fmt(2),
            remote.fmt(2),
            f"{remote.median - local.median:.2f}",
        ]
        for size, local, remote, _ in hops
    ]
    box_rows = [
        [
            b.label,
            f"{b.total_predictions_per_s:.1f}",
            f"{b.median('model_fps'):.2f}",
            f"{b.median('latency_ms_p95'):.0f}",
            f"{b.median('fps'):.1f}",
            f"{b.requests:.0f}",
            f"{b.clips:.0f}",
            f"{b.executions:.0f}",
            f"{b.clips / b.executions:.2f}" if b.executions else "--",
            f"{b.rss_mib_peak:.0f}",
        ]
        for b in boxes
    ]
    result.data = {
        "hop": [
            {"size": size, "local_ms": local.as_json(), "triton_ms": remote.as_json()}
            for size, local, remote, _ in hops
        ],
        "boxes": [
            {
                "processes": b.processes,
                "streams": b.streams,
                "wall_s": b.wall_s,
                "requests": b.requests,
                "clips": b.clips,
                "executions": b.executions,
                "rss_mib_peak": b.rss_mib_peak,
                "summaries": b.summaries,
            }
            for b in boxes
        ],
    }
    for size, local, remote, _ in hops:
        result.headline.append(
            (
                f"Triton over gRPC vs a local session, 8x{size} clip (CPU)",
                f"{remote.median:.1f} vs {local.median:.1f} ms: the hop costs {remote.median - local.median:.1f} ms",
            )
        )
    merged = all(b.executions < b.requests for b in boxes if b.processes > 1)
    result.targets += [
        Target(
            "several processes share one server: merged executions",
            "nv_inference_exec_count < nv_inference_request_success",
            "; ".join(
                f"{b.label}: {b.executions:.0f} < {b.requests:.0f}"
                for b in boxes
                if b.processes > 1
            ),
            merged,
            "" if merged else "the requests did not overlap; see the table",
        ),
        Target(
            "GPU figures (the onnxruntime backend, TensorRT fp16)",
            "measured on a GPU server",
            "no GPU lent to this machine",
            None,
            "no GPU here",
        ),
    ]
    result.body = "\n".join(
        [
            "What: the real tritonserver 2.51 from PyTriton 0.7 (CPU only), on 127.0.0.1, with the model "
            "in ONNX Runtime inside Triton's Python backend (PyTriton bundles no onnxruntime backend) and "
            "the dynamic batcher `epic-export --triton-repo --triton-instance cpu` configures. No GPU "
            "figures: no GPU is lent to this machine.",
            "",
            f"**The hop**: a one-layer dial model, batch 1, {plan.runs} runs each, median (min-max). "
            "Triton's time is `TritonRunner.timed_run` (request, server, answer); the difference is what "
            "moving a clip to a server costs on one machine, before any network.",
            "",
            md_table(
                ["clip", "uint8 size", "local session ms", "Triton gRPC ms", "hop ms"], hop_rows
            ),
            "",
            f"**Boxes sharing a server**: {plan.video_size[0]}x{plan.video_size[1]} {FPS:.0f} fps "
            f"synthetic video ({plan.seconds:g} s) per stream as a live camera (`--realtime`), the demo "
            "model on the server. Per-stream figures are medians over the streams; Triton's counts are "
            "the metrics' increase over the run (clips per execution: the mean batch the model ran).",
            "",
            md_table(
                [
                    "layout",
                    "total predictions/s",
                    "predictions/s per stream",
                    "p95 latency ms",
                    "capture fps",
                    "requests",
                    "clips",
                    "executions",
                    "clips per execution",
                    "RSS MiB (clients)",
                ],
                box_rows,
            ),
        ]
    )
    return result
