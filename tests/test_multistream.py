"""Several streams in one process, sharing one inference scheduler and one session.

Real threads, real sources (files, frame folders, MJPEG over HTTP), tiny models. No timing
asserts beyond ratios between two runs on the same machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMING_KEYS, count_frames, grey_frames, read_events, slow_runner
from onnx_models import classifier_model, probe_model
from reliability_util import ROOT, StallingServer, epic_threads

from stream.__main__ import main
from stream.errors import OptionError
from stream.naming import name_sources
from stream.pipeline import StreamOptions, StreamPipeline


def by_stream(events: list[dict]) -> dict[str, list[dict]]:
    streams: dict[str, list[dict]] = {}
    for event in events:
        streams.setdefault(event["stream"], []).append(event)
    return streams


def comparable(events: list[dict]) -> list[dict]:
    """Events without timing, and without scores (compared apart, within 1e-4)."""
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS | {"scores"}} for e in events]


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)


def test_four_file_streams_give_the_events_of_four_single_runs(
    tmp_path, probe, make_video, make_frame_folder
):
    sources = [
        make_video("ramp.mp4", levels=[10 + 6 * i for i in range(40)]),
        make_video("zigzag.avi", levels=[(37 * i) % 240 for i in range(33)]),
        make_video("short.mp4", levels=[200 - 9 * i for i in range(12)], fps=25),
        make_frame_folder("folder", levels=range(5, 250, 7)),
    ]
    singles = {}
    for k, source in enumerate(sources):
        events = tmp_path / f"single{k}.jsonl"
        assert (
            main(
                [
                    "--source",
                    str(source),
                    "--model",
                    str(probe),
                    "--events",
                    str(events),
                    "--no-display",
                    "--smoothing",
                    "vote",
                ]
            )
            == 0
        )
        ((name, lines),) = by_stream(read_events(events)).items()
        singles[name] = lines
    assert sorted(singles) == ["folder", "ramp", "short", "zigzag"]

    events = tmp_path / "multi.jsonl"
    argv = ["--model", str(probe), "--events", str(events), "--no-display", "--smoothing", "vote"]
    for source in sources:
        argv += ["--source", str(source)]
    assert main(argv) == 0
    multi = by_stream(read_events(events))
    assert sorted(multi) == sorted(singles)
    for name, lines in multi.items():
        assert lines[-1]["type"] == "summary"  # each stream's summary is its last line
        assert comparable(lines) == comparable(singles[name])
        predictions = [line for line in lines if line["type"] == "prediction"]
        single_predictions = [line for line in singles[name] if line["type"] == "prediction"]
        for mine, single in zip(predictions, single_predictions, strict=True):
            np.testing.assert_allclose(mine["scores"], single["scores"], atol=1e-4)


def test_batches_hold_clips_of_several_streams(tmp_path, probe, make_video):
    videos = [str(make_video(f"v{k}.mp4", frames=48)) for k in range(4)]
    pipeline = StreamPipeline(
        StreamOptions(source=tuple(videos), model=probe, display=False, every=2)
    )
    pipeline.run()
    scheduler = pipeline.scheduler
    assert scheduler.clips_run == 4 * 24 == sum(s["predictions"] for s in pipeline.summaries)
    assert scheduler.batches < scheduler.clips_run  # some batches held more than one clip
    assert not epic_threads()


def test_a_stalled_camera_does_not_hold_the_other_streams(
    tmp_path, probe, mjpeg_server, monkeypatch
):
    """Three live cameras, then the same three beside one that sends ten frames and falls silent
    with its connection open: the three keep their prediction rate, the silent one is reported."""
    slow_runner(monkeypatch, 0.08)  # the model, not the CPU, sets the rate

    def cameras() -> list[str]:
        return [
            mjpeg_server(grey_frames([(11 * i + 40 * k) % 250 for i in range(120)]), fps=30).url
            for k in range(3)
        ]

    def rates(summaries) -> list[float]:
        return [s["predictions"] / s["wall_s"] for s in summaries if s["stream"].startswith("cam")]

    def run(urls: list[str], *, with_stalled: bool) -> list[dict]:
        named = tuple(f"cam{k}={url}" for k, url in enumerate(urls))
        stalled = StallingServer(grey_frames(range(40, 240, 20)))  # ten frames, then silence
        try:
            extra = (f"stalled={stalled.url}",) if with_stalled else ()
            pipeline = StreamPipeline(
                StreamOptions(
                    source=named + extra, model=probe, display=False, reconnect=0, timeout_s=1.0
                )
            )
            pipeline.run()
            return pipeline.summaries
        finally:
            stalled.close()

    alone = run(cameras(), with_stalled=False)
    beside = run(cameras(), with_stalled=True)
    assert len(alone) == 3 and len(beside) == 4
    base, shared = np.mean(rates(alone)), np.mean(rates(beside))
    assert shared >= 0.8 * base, (rates(alone), rates(beside))
    silent = next(s for s in beside if s["stream"] == "stalled")
    assert "stopped sending frames" in silent["ended_by"]
    assert silent["frames"] + silent["dropped_frames"] == 10
    assert not epic_threads()


def test_no_stream_starves_when_batches_are_smaller_than_the_streams(
    tmp_path, probe, mjpeg_server, monkeypatch
):
    slow_runner(monkeypatch, 0.05)
    urls = [
        mjpeg_server(grey_frames([(13 * i + 50 * k) % 250 for i in range(90)]), fps=30).url
        for k in range(3)
    ]
    pipeline = StreamPipeline(
        StreamOptions(source=tuple(urls), model=probe, display=False, reconnect=0, batch=1)
    )
    pipeline.run()
    counts = [s["predictions"] for s in pipeline.summaries]
    assert pipeline.scheduler.batches == pipeline.scheduler.clips_run == sum(counts)  # batch 1
    assert min(counts) >= 0.8 * max(counts), counts  # round-robin: turns, not luck


def test_a_model_with_a_static_batch_of_one_runs_one_clip_at_a_time(tmp_path, make_video, capsys):
    model = classifier_model(tmp_path / "b1.onnx", input_shape=[1, 4, 16, 16, 3])
    events = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(make_video("a.mp4", frames=24)),
                "--source",
                str(make_video("b.mp4", frames=24)),
                "--model",
                str(model),
                "--events",
                str(events),
                "--no-display",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("takes one clip at a time") == 1 and "batches of 1" in out
    summaries = [e for e in read_events(events) if e["type"] == "summary"]
    assert {s["stream"] for s in summaries} == {"a", "b"}
    assert all(s["predictions"] == 3 for s in summaries)  # frames 0, 8, 16 at 30 fps


def test_several_streams_need_stream_in_the_record_path(tmp_path, probe, make_video, capsys):
    a, b = make_video("a.mp4", frames=5), make_video("b.mp4", frames=5)
    record = tmp_path / "out.mp4"
    rc = main(
        [
            "--source",
            str(a),
            "--source",
            str(b),
            "--model",
            str(probe),
            "--record",
            str(record),
            "--no-display",
        ]
    )
    assert rc == OptionError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "{stream}" in err[0] and "Traceback" not in err[0]
    assert not record.exists()
    # With {stream}, each stream gets its own recording.
    assert (
        main(
            [
                "--source",
                str(a),
                "--source",
                f"second={b}",
                "--model",
                str(probe),
                "--record",
                str(tmp_path / "{stream}.avi"),
                "--no-display",
            ]
        )
        == 0
    )
    assert count_frames(tmp_path / "a.avi") == count_frames(tmp_path / "second.avi") == 5


def test_sigint_finalizes_every_streams_recording_and_summary(tmp_path, probe, mjpeg_server):
    urls = [
        mjpeg_server(grey_frames([(7 * i + 60 * k) % 250 for i in range(900)]), fps=30).url
        for k in range(3)
    ]
    out = tmp_path / "out"
    out.mkdir()
    events = tmp_path / "e.jsonl"
    argv = [
        sys.executable,
        "-m",
        "stream",
        "--model",
        str(probe),
        "--record",
        str(out / "{stream}.avi"),
        "--events",
        str(events),
        "--no-display",
        "--reconnect",
        "0",
    ]
    for k, url in enumerate(urls):
        argv += ["--source", f"cam{k}={url}"]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            lines = events.read_text().splitlines() if events.exists() else []
            if {json.loads(line)["stream"] for line in lines} == {"cam0", "cam1", "cam2"} and len(
                lines
            ) > 30:
                break
            time.sleep(0.1)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            import os

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summaries = {e["stream"]: e for e in read_events(events) if e["type"] == "summary"}
    assert sorted(summaries) == ["cam0", "cam1", "cam2"]
    for name, summary in summaries.items():
        assert summary["ended_by"] == "SIGINT"
        assert summary["frames"] > 0 and count_frames(out / f"{name}.avi") == summary["frames"]


def test_stream_names():
    named = name_sources(
        ["webcam:2", "rtsp://user:secret@10.0.0.5:554/live", "door=rtsp://x/1", "webcam"]
    )
    assert [n.name for n in named] == ["webcam2", "10.0.0.5", "door", "webcam0"]
    twice = name_sources(["webcam", "0", "webcam:0"])
    assert [n.name for n in twice] == ["webcam0", "webcam0-2", "webcam0-3"]
    with pytest.raises(OptionError, match="unique"):
        name_sources(["a=webcam", "a=webcam:1"])
    with pytest.raises(OptionError, match="letters, digits"):
        name_sources(["my cam=webcam"])
    # A URL whose query holds '=' is a source, not a name.
    (url,) = name_sources(["http://127.0.0.1:8080/video?user=x"])
    assert url.text == "http://127.0.0.1:8080/video?user=x" and url.name == "127.0.0.1"
