"""Runs that last weeks (issue 16): events read while the run goes on, rotation without loss,
periodic stats and a prediction-rate cap for live streams."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import grey_frames, read_events
from onnx_models import probe_model
from reliability_util import ROOT

from stream.__main__ import main


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)


def test_max_rate_caps_a_live_streams_predictions(tmp_path, probe, mjpeg_server):
    camera = mjpeg_server(grey_frames([(9 * i) % 250 for i in range(90)]), fps=30)  # 3 s
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                camera.url,
                "--model",
                str(probe),
                "--events",
                str(events),
                "--no-display",
                "--reconnect",
                "0",
                "--max-rate",
                "4",
            ]
        )
        == 0
    )
    predictions = [e for e in read_events(events) if e["type"] == "prediction"]
    times = [p["time_s"] for p in predictions]
    # One prediction every 0.25 s (frames arrive every 33 ms: without the cap, ~30/s). The gaps
    # are between arrival times of the clips' newest frames, which a busy machine bunches.
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert len(predictions) <= 3 * 4 + 2 and gaps[len(gaps) // 2] >= 0.2, gaps


def test_the_cpu_default_cap_is_eight_a_second(tmp_path, probe, mjpeg_server):
    camera = mjpeg_server(grey_frames([(9 * i) % 250 for i in range(90)]), fps=30)
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                camera.url,
                "--model",
                str(probe),
                "--events",
                str(events),
                "--no-display",
                "--reconnect",
                "0",
            ]
        )
        == 0
    )
    predictions = [e for e in read_events(events) if e["type"] == "prediction"]
    assert 2 * 8 <= len(predictions) <= 3 * 8 + 2


def test_stats_lines_cover_each_period_of_a_live_stream(tmp_path, probe, mjpeg_server):
    camera = mjpeg_server(grey_frames([(9 * i) % 250 for i in range(75)]), fps=30)  # 2.5 s
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                f"cam={camera.url}",
                "--model",
                str(probe),
                "--events",
                str(events),
                "--no-display",
                "--reconnect",
                "0",
                "--stats-every",
                "0.5",
            ]
        )
        == 0
    )
    stats = [e for e in read_events(events) if e["type"] == "stats"]
    assert len(stats) >= 3
    for line in stats:
        assert set(line) >= {
            "stream",
            "wall_time",
            "period_s",
            "capture_fps",
            "predictions",
            "latency_ms_p50",
            "latency_ms_p95",
            "dropped_frames",
        }
        assert line["stream"] == "cam" and line["period_s"] == pytest.approx(0.5, abs=0.25)
    assert 15 <= stats[1]["capture_fps"] <= 45  # a 30 fps camera
    summary = read_events(events)[-1]
    assert sum(s["predictions"] for s in stats) <= summary["predictions"]


def test_files_write_no_stats_unless_asked(tmp_path, probe, make_video):
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(make_video(frames=30)),
                "--model",
                str(probe),
                "--events",
                str(events),
                "--no-display",
            ]
        )
        == 0
    )
    assert not [e for e in read_events(events) if e["type"] == "stats"]


def test_events_to_stdout_leave_stdout_to_the_events(tmp_path, probe, make_video):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "--source",
            str(make_video(frames=30)),
            "--model",
            str(probe),
            "--events",
            "-",
            "--no-display",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    assert lines[-1]["type"] == "summary" and sum(e["type"] == "prediction" for e in lines) == 4
    assert "epic-stream summary" in done.stderr and "model probe.onnx" in done.stderr


def test_sighup_reopens_the_events_file_without_losing_or_splitting_a_line(
    tmp_path, probe, mjpeg_server
):
    camera = mjpeg_server(grey_frames([(7 * i) % 250 for i in range(180)]), fps=30)  # 6 s
    events = tmp_path / "e.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "--source",
            camera.url,
            "--model",
            str(probe),
            "--events",
            str(events),
            "--no-display",
            "--reconnect",
            "0",
            "--max-rate",
            "30",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    rotated = []
    try:
        for k in range(3):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                not events.exists() or events.stat().st_size < 2000
            ):
                time.sleep(0.05)
            moved = tmp_path / f"e.jsonl.{k + 1}"
            events.rename(moved)  # logrotate's move, then its postrotate SIGHUP
            os.kill(proc.pid, signal.SIGHUP)
            rotated.append(moved)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    parts = [*rotated, events]
    records = [record for part in parts for record in read_events(part)]  # no split line
    assert all(part.read_text().endswith("\n") for part in parts)
    summary = records[-1]
    assert summary["type"] == "summary"
    assert sum(r["type"] == "prediction" for r in records) == summary["predictions"] > 30


def test_segment_boundaries_do_not_depend_on_the_prediction_rate(tmp_path, make_video):
    """Smoothing counts seconds, not predictions: the same file predicted every 2, 8 and 15 frames
    (15, 3.75 and 2 a second) puts its segment boundaries within 0.5 s of each other."""
    from onnx_models import faulty_model

    model = faulty_model(tmp_path / "m.onnx", clip_seconds=0.3)  # dark/bright by mean level
    levels = [40] * 90 + [220] * 90 + [40] * 90 + [220] * 60  # 3 s, 3 s, 3 s, 2 s at 30 fps
    video = make_video("v.mp4", levels=levels, frames=len(levels))
    boundaries = {}
    for every in (2, 8, 15):
        events = tmp_path / f"e{every}.jsonl"
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
                    "--every",
                    str(every),
                ]
            )
            == 0
        )
        segments = [s for s in read_events(events)[-1]["segments"] if s["label"] != "no action"]
        assert [s["label"] for s in segments] == ["dark", "bright", "dark", "bright"], segments
        boundaries[every] = [s["start_s"] for s in segments[1:]]
    for a, b in itertools.combinations(boundaries.values(), 2):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.5, boundaries


def test_source_states_are_events(tmp_path, probe, mjpeg_server):
    import threading

    from reliability_util import StallingServer

    # A camera that drops every connection after 30 frames: lost, reconnecting, reopened.
    dropping = mjpeg_server(grey_frames([(9 * i) % 250 for i in range(60)]), fps=30, drop_after=30)
    # A camera that sends 10 frames, then nothing with its connection open: stalled.
    silent = StallingServer(grey_frames(range(40, 240, 20)))
    # Both go away for good after 4 s, so that every reconnect after that fails and the run ends.
    gone = threading.Timer(4.0, lambda: (dropping.close(), silent.close()))
    gone.start()
    events = tmp_path / "e.jsonl"
    try:
        assert (
            main(
                [
                    "--source",
                    f"drop={dropping.url}",
                    "--source",
                    f"silent={silent.url}",
                    "--model",
                    str(probe),
                    "--events",
                    str(events),
                    "--no-display",
                    "--reconnect",
                    "1",
                    "--stall-s",
                    "0.5",
                    "--timeout",
                    "1",
                ]
            )
            == 0
        )
    finally:
        gone.cancel()
        silent.close()
    states: dict[str, list[str]] = {}
    for line in read_events(events):
        if line["type"] == "source":
            assert set(line) == {"type", "stream", "state", "time_s", "wall_time", "detail"}
            states.setdefault(line["stream"], []).append(line["state"])
    assert states["drop"][:4] == ["opened", "lost", "reconnecting", "reopened"], states
    assert states["drop"][-1] == "ended"
    assert states["silent"][:2] == ["opened", "stalled"] and states["silent"][-1] == "ended", states
