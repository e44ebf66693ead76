"""SIGINT and SIGTERM mid-stream, for a file (lossless mode) and a live camera (MJPEG over HTTP):
a finalized, playable recording; an events file ending with its summary; exit 130 / 143 within
5 s; no thread left running.

``--realtime`` files are covered by test_stream_cli.py::test_a_signal_leaves_a_playable_recording_
and_a_summary. Here each case runs twice: as a real ``python -m stream`` process (exit code, exit
time, the process is gone) and in this process (every thread it started has ended).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import count_frames, grey_frames
from onnx_models import matmul_model, probe_model
from reliability_util import ROOT, StallingServer, epic_threads

from stream.pipeline import Interrupted, StreamOptions, StreamPipeline
from stream.runtime import Runner

SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
EXIT_WITHIN_S = 5.0


def summary_of(events: Path) -> dict:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert all(line["type"] in ("prediction", "segment", "source", "stats") for line in lines[:-1])
    assert lines[-1]["type"] == "summary"
    return lines[-1]


def predictions_in(events: Path) -> int:
    return events.read_text().count('"prediction"') if events.exists() else 0


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    # About 30 ms a clip on one core: with --every 1 a 300-frame file takes 10 s or more.
    return matmul_model(tmp_path_factory.mktemp("models") / "slow.onnx", size=256, depth=64)


@pytest.fixture
def camera(mjpeg_server):
    """A live camera that streams for 20 s."""
    return mjpeg_server(grey_frames([(7 * i) % 250 for i in range(600)]), fps=30)


def run_and_signal(argv: list[str], events: Path, sig: signal.Signals) -> tuple[int, str, float]:
    """Start ``python -m stream ARGV``, send ``sig`` once it has streamed for a while; return
    (exit code, stderr, seconds from the signal to the exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and predictions_in(events) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.5)
        proc.send_signal(sig)
        sent = time.monotonic()
        try:
            _, err = proc.communicate(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN_S:g} s after {sig.name}")
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_outputs(record: Path, events: Path, sig: signal.Signals, total: int | None) -> dict:
    summary = summary_of(events)
    assert summary["ended_by"] == sig.name
    assert summary["frames"] > 0 and summary["predictions"] >= 5
    if total is not None:
        assert summary["frames"] < total  # stopped midway, not at the end
    assert count_frames(record) == summary["frames"]  # finalized: every presented frame plays
    return summary


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_a_signal_stops_a_file_cleanly(tmp_path, make_video, slow_model, sig, code):
    video = make_video("long.mp4", frames=300)
    record, events = tmp_path / "out.mp4", tmp_path / "events.jsonl"
    rc, err, took = run_and_signal(
        [
            "--source",
            str(video),
            "--model",
            str(slow_model),
            "--every",
            "1",
            "--threads",
            "1",
            "--record",
            str(record),
            "--events",
            str(events),
            "--no-display",
        ],
        events,
        sig,
    )
    assert rc == code, err
    assert took < EXIT_WITHIN_S
    assert "Traceback" not in err and "did not stop" not in err
    assert err.strip().splitlines()[-1] == f"epic-stream: stopped by {sig.name}; outputs finalized"
    summary = check_outputs(record, events, sig, total=300)
    assert summary["mode"] == "lossless" and summary["dropped_frames"] == 0


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_a_signal_stops_a_live_camera_cleanly(tmp_path, camera, sig, code):
    model = probe_model(tmp_path / "probe.onnx")
    record, events = tmp_path / "cam.avi", tmp_path / "cam.jsonl"
    rc, err, took = run_and_signal(
        [
            "--source",
            camera.url,
            "--model",
            str(model),
            "--record",
            str(record),
            "--events",
            str(events),
            "--no-display",
        ],
        events,
        sig,
    )
    assert rc == code, err
    assert took < EXIT_WITHIN_S
    assert "Traceback" not in err and "did not stop" not in err
    summary = check_outputs(record, events, sig, total=600)
    assert summary["mode"] == "live"


# -- in this process: every thread the stream started has ended -----------------------------------


@contextmanager
def harmless(sig: signal.Signals):
    """While the pipeline runs it owns ``sig``; outside it, a stray one must not end pytest."""
    previous = signal.signal(sig, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(sig, previous)


def signal_when(pipeline: StreamPipeline, sig: signal.Signals, frames: int) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            capture = pipeline.channels[0].capture if pipeline.channels else None
            if capture is not None and capture.frames >= frames and pipeline.summary is None:
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, name="test-signaller", daemon=True)
    thread.start()
    return thread


def run_in_process(options: StreamOptions, sig: signal.Signals, frames: int) -> dict:
    before = set(threading.enumerate())
    pipeline = StreamPipeline(options)
    with harmless(sig):
        watcher = signal_when(pipeline, sig, frames)
        with pytest.raises(Interrupted) as info:
            pipeline.run()
        watcher.join(5)
    assert info.value.signum == sig
    assert not epic_threads()
    # Nothing the stream started is left (the test camera's own request threads may be).
    left = [t for t in set(threading.enumerate()) - before if "process_request" not in t.name]
    assert left == []
    return pipeline.summary


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_in_process_a_signal_leaves_no_thread_for_a_file(tmp_path, make_video, monkeypatch, sig):
    original = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, n=1: time.sleep(0.03) or original(self, n))
    model = probe_model(tmp_path / "probe.onnx")
    record, events = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    options = StreamOptions(
        source=str(make_video("v.mp4", frames=300)),
        model=model,
        every=1,
        record=record,
        events=events,
        display=False,
    )
    summary = run_in_process(options, sig, frames=20)
    assert summary_of(events) == summary and summary["ended_by"] == sig.name
    assert 0 < summary["frames"] < 300
    assert count_frames(record) == summary["frames"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_in_process_a_signal_leaves_no_thread_for_a_live_camera(tmp_path, camera, sig):
    model = probe_model(tmp_path / "probe.onnx")
    record, events = tmp_path / "cam.mp4", tmp_path / "cam.jsonl"
    options = StreamOptions(
        source=camera.url, model=model, record=record, events=events, display=False, reconnect=0
    )
    summary = run_in_process(options, sig, frames=20)
    assert summary_of(events) == summary and summary["ended_by"] == sig.name
    assert count_frames(record) == summary["frames"] > 0


def test_a_signal_while_a_live_camera_stalls_still_exits_in_time(tmp_path):
    """The capture thread is stuck in a read that only the 10 s source timeout ends: the signal
    must not wait for it. Finalization gives it 2 s, says so, and the process exits."""
    server = StallingServer(grey_frames(range(40, 240, 20)))  # 10 frames, then silence
    model = probe_model(tmp_path / "probe.onnx")
    record, events = tmp_path / "cam.avi", tmp_path / "cam.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "--source",
            server.url,
            "--model",
            str(model),
            "--record",
            str(record),
            "--events",
            str(events),
            "--no-display",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while predictions_in(events) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the 10 frames are long read: capture now waits on a silent socket
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=EXIT_WITHIN_S)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    assert proc.returncode == 130, err
    assert took < EXIT_WITHIN_S
    assert "Traceback" not in err
    summary = summary_of(events)
    assert summary["ended_by"] == "SIGINT" and summary["frames"] + summary["dropped_frames"] == 10
    assert count_frames(record) == summary["frames"]


def test_after_sigkill_an_avi_recording_and_the_events_so_far_survive(tmp_path, camera):
    """No handler runs on SIGKILL (or a power cut). Motion JPEG AVI needs no closing index, so the
    frames written so far still play; each events line was flushed whole. (An MP4 keeps its index
    for the end and is lost: see test_reliability_sources.py's never-finalized case.)"""
    model = probe_model(tmp_path / "probe.onnx")
    record, events = tmp_path / "cam.avi", tmp_path / "cam.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "--source",
            camera.url,
            "--model",
            str(model),
            "--record",
            str(record),
            "--events",
            str(events),
            "--no-display",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while predictions_in(events) < 90 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None
        proc.kill()
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert all(line["type"] in ("prediction", "segment", "source", "stats") for line in lines)
    assert sum(line["type"] == "prediction" for line in lines) >= 90
    assert count_frames(record) >= 20  # 3 s streamed; the first second is held to measure the rate
