"""epic-stream against a real Triton Inference Server (PyTriton's tritonserver 2.51, CPU-only).

The server runs in its own venv (built once, see tests/triton_server.py) on 127.0.0.1 and serves
the contract model through ONNX Runtime with dynamic batching. The tests: four streams from two
epic-stream processes give the labels of local inference and are batched by the server; a server
killed mid-stream is survived, reported and, once restarted, used again; a model that does not
match, an unknown model and a server that is down are refused in one line before any stream starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import count_frames, grey_frames, write_video
from onnx_models import classifier_model, probe_model
from rich.console import Console
from triton_server import TritonServer, free_port

from export.triton import write_triton_repo
from stream.__main__ import main
from stream.contract import load_contract
from stream.errors import InferenceUnavailable
from stream.pipeline import StreamOptions, run_streams
from stream.triton_client import open_triton

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 4, 16


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="module")
def model(workdir) -> Path:
    # The probe's label is the brightest frame of the clip: it changes along the videos below.
    return probe_model(workdir / "probe.onnx", num_frames=FRAMES, image_size=SIZE)


@pytest.fixture(scope="module")
def server(workdir, model):
    # The repository epic-export --triton-repo writes (CPU instance: this server has no GPU),
    # with a 20 ms queue delay; the 20 ms per execution stand in for a real model's compute, so
    # the two processes' requests queue behind each other, as on a busy GPU server.
    contract = load_contract(model)
    model_dir = write_triton_repo(
        model,
        workdir / "repo",
        name=model.stem,
        num_frames=contract.num_frames,
        image_size=contract.image_size,
        class_names=contract.class_names,
        clip_seconds=contract.clip_seconds,
        instance="cpu",
        max_queue_delay_us=20000,
    )
    srv = TritonServer(model_dir, workdir=workdir / "server", exec_ms=20.0)
    try:
        yield srv.start()
    finally:
        srv.stop()


def _video(path: Path, seed: int, frames: int = 150) -> Path:
    levels = np.random.default_rng(seed).integers(150, 256, frames)
    return write_video(path, grey_frames(levels, size=(64, 48)))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _predictions(lines: list[dict], stream: str) -> dict[int, dict]:
    return {
        r["frame_index"]: r for r in lines if r["type"] == "prediction" and r["stream"] == stream
    }


def _summary(lines: list[dict], stream: str) -> dict:
    return next(r for r in lines if r["type"] == "summary" and r["stream"] == stream)


@contextlib.contextmanager
def _epic_stream(argv: list[str]):
    """An epic-stream process in its own group, killed with it whatever happens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", *argv, "--no-display"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_four_streams_from_two_processes_get_local_labels_in_batched_executions(
    server, model, workdir
):
    videos = {f"cam{k}": _video(workdir / f"cam{k}.avi", seed=k, frames=300) for k in range(4)}
    before = server.metrics()
    runs = []
    with contextlib.ExitStack() as stack:
        for half, names in enumerate((("cam0", "cam1"), ("cam2", "cam3"))):
            events = workdir / f"box{half}.jsonl"
            argv = [a for name in names for a in ("--source", f"{name}={videos[name]}")]
            argv += ["--model", str(model), "--server", server.grpc_url, "--events", str(events)]
            runs.append((stack.enter_context(_epic_stream(argv)), events, names))
        for proc, _, _ in runs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    after = server.metrics()

    local_events = workdir / "local.jsonl"
    run_streams(
        StreamOptions(
            source=tuple(f"{n}={p}" for n, p in videos.items()),
            model=model,
            events=local_events,
            display=False,
        ),
        console=Console(file=io.StringIO()),
    )
    local = _lines(local_events)
    for _, events, names in runs:
        remote = _lines(events)
        for name in names:
            theirs, ours = _predictions(remote, name), _predictions(local, name)
            assert theirs.keys() == ours.keys() and len(ours) >= 15
            assert [theirs[i]["raw"]["label"] for i in sorted(theirs)] == [
                ours[i]["raw"]["label"] for i in sorted(ours)
            ]
            assert len({ours[i]["raw"]["label"] for i in ours}) > 1  # the label really changes
            for i in ours:
                np.testing.assert_allclose(theirs[i]["scores"], ours[i]["scores"], atol=1e-6)
            assert _summary(remote, name)["server_outages"] == 0
            assert "server_outages" not in _summary(local, name)  # local inference is never lost

    requests = after["nv_inference_request_success"] - before.get("nv_inference_request_success", 0)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0)
    clips = after["nv_inference_count"] - before.get("nv_inference_count", 0)
    # Every prediction's clip, and each process's one warm-up clip at start.
    assert clips == sum(len(_predictions(_lines(e), n)) for _, e, ns in runs for n in ns) + len(
        runs
    )
    print(f"Triton: {requests:.0f} requests, {clips:.0f} clips, {executions:.0f} executions")
    # The dynamic batcher merged the two processes' requests into fewer model executions.
    assert executions < requests, (executions, requests)


def test_http_gives_the_same_predictions(server, model, workdir):
    video = _video(workdir / "http.avi", seed=9, frames=60)
    out = {}
    for how, extra in (("http", ["--server", server.http_url]), ("local", [])):
        events = workdir / f"{how}.jsonl"
        assert (
            main(
                [
                    "--source",
                    str(video),
                    "--model",
                    str(model),
                    "--events",
                    str(events),
                    "--no-display",
                    *extra,
                ]
            )
            == 0
        )
        out[how] = _predictions(_lines(events), "http")
    assert out["http"].keys() == out["local"].keys()
    for i in out["local"]:
        np.testing.assert_allclose(out["http"][i]["scores"], out["local"][i]["scores"], atol=1e-6)


def test_a_server_killed_mid_stream_is_survived_reported_and_used_again(server, model, workdir):
    frames = 30 * 16
    video = _video(workdir / "live.avi", seed=5, frames=frames)
    events, record = workdir / "outage.jsonl", workdir / "outage.avi"
    argv = [
        "--source",
        f"live={video}",
        "--realtime",
        "--model",
        str(model),
        "--server",
        server.grpc_url,
        "--server-timeout",
        "2",
        "--events",
        str(events),
        "--record",
        str(record),
    ]
    with _epic_stream(argv) as proc:
        deadline = time.monotonic() + 30
        while not (events.exists() and '"prediction"' in events.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        server.kill()
        time.sleep(2.0)
        assert proc.poll() is None  # the stream goes on without its server
        server.start()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = _lines(events)
    states = [r for r in lines if r["type"] == "server"]
    assert [r["state"] for r in states] == ["lost", "restored"]
    assert states[0]["stream"] == "live" and states[0]["detail"] and states[0]["outages"] == 1
    assert "server lost" in err and "server back" in err
    lost_at = lines.index(states[0])
    restored_at = lines.index(states[1])
    before = [r for r in lines[:lost_at] if r["type"] == "prediction"]
    after = [r for r in lines[restored_at:] if r["type"] == "prediction"]
    assert before and len(after) >= 5  # predictions resumed after the restart
    assert after[0]["frame_index"] > before[-1]["frame_index"]
    summary = _summary(lines, "live")
    assert summary["server_outages"] == 1 and summary["ended_by"] == "end of stream"
    # Capture and recording went on through the outage: every presented frame is recorded.
    assert summary["frames"] >= 0.9 * frames
    assert count_frames(record) == summary["frames"]


@pytest.mark.parametrize(
    ("what", "message"),
    [
        (
            "mismatch",
            "does not match other.onnx: input 'frames' is [-1, 4, 16, 16, 3], the model file takes [-1, 8, 16, 16, 3]",
        ),
        ("unknown", "has no model 'nosuch' ready; give its name as --server grpc://"),
        ("down", "cannot reach the Triton server at grpc://127.0.0.1:"),
    ],
)
def test_a_server_that_cannot_serve_the_model_is_one_line_before_any_stream(
    server, workdir, what, message, capsys
):
    other = classifier_model(workdir / "other.onnx", num_frames=8, image_size=SIZE)
    video = _video(workdir / "refused.avi", seed=3, frames=10)
    url = {
        "mismatch": f"{server.grpc_url}/probe",
        "unknown": f"{server.grpc_url}/nosuch",
        "down": f"grpc://127.0.0.1:{free_port()}/probe",
    }[what]
    record = workdir / f"refused-{what}.avi"
    code = main(
        [
            "--source",
            str(video),
            "--model",
            str(other),
            "--server",
            url,
            "--record",
            str(record),
            "--server-timeout",
            "3",
            "--no-display",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("epic-stream: error: ") and message in err[0], err
    assert not record.exists()  # refused before any stream started


def test_a_request_slower_than_the_timeout_is_an_outage_not_a_hang(server, model):
    runner, _ = open_triton(server.grpc_url, model, batch=2, timeout_s=10.0)
    assert runner.max_batch == 2 and runner.run(2).shape == (2, FRAMES + 1)
    runner.timeout_s = 0.005  # the server takes 20 ms per execution
    start = time.monotonic()
    with pytest.raises(InferenceUnavailable, match="Deadline Exceeded"):
        runner.run(1)
    assert time.monotonic() - start < 5
    runner.timeout_s = 10.0
    assert runner.run(1).shape == (1, FRAMES + 1)  # a fresh connection serves again
    runner.close()
