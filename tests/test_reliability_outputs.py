"""Outputs that cannot be written: refused before the stream starts when that is knowable, and a
disk that fills while recording stops the run cleanly with the recording so far playable.

Where this machine lets root mount a tmpfs (CI does), the read-only folder and the full disk are
real filesystems; elsewhere they are simulated, chosen at run time, never skipped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import count_frames, write_video
from onnx_models import probe_model
from reliability_util import epic_threads, one_line_error, read_only_folder, tmpfs

import stream.pipeline
import stream.recorder
from stream.__main__ import main
from stream.errors import OutputError
from stream.recorder import RESERVE_BYTES, SPACE_CHECK_EVERY, VideoRecorder, writable_fps

PROG = "epic-stream"
MIB = 1 << 20


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)


def noise_video(path: Path, frames: int, size=(640, 480)) -> Path:
    """Frames that compress badly (noise), so that a recording of them grows fast."""
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(8)]
    return write_video(path, [tiles[i % 8] for i in range(frames)])


@pytest.fixture
def nothing_may_start(monkeypatch):
    """Records whether the model was loaded or the source opened: neither may happen."""
    started: list[str] = []
    monkeypatch.setattr(stream.pipeline, "create_session", lambda *a, **k: started.append("model"))
    monkeypatch.setattr(stream.pipeline, "open_source", lambda *a, **k: started.append("source"))
    return started


@pytest.mark.parametrize("option", ["--record", "--events"])
def test_an_output_in_a_read_only_folder_is_refused_before_the_stream_starts(
    tmp_path, probe, make_video, capsys, monkeypatch, nothing_may_start, option
):
    video = make_video(frames=3)
    with read_only_folder(tmp_path, monkeypatch) as (folder, how):
        target = folder / ("out.mp4" if option == "--record" else "events.jsonl")
        rc = main(
            ["--source", str(video), "--model", str(probe), option, str(target), "--no-display"]
        )
        line = one_line_error(capsys.readouterr().err, PROG)
        assert not target.exists(), how
    assert rc == OutputError.exit_code == 2
    assert str(target) in line and "cannot write" in line, (how, line)
    assert nothing_may_start == []  # no model loaded, no frame read


def test_recording_stops_cleanly_when_the_disk_fills(tmp_path, probe, capsys, monkeypatch):
    """A disk with 3 MiB above the recorder's reserve: recording stops at the reserve, the MP4 is
    finalized (its index fits in the reserve) and plays, the events file is complete."""
    video = noise_video(tmp_path / "noise.avi", 150)  # about 90 KiB a frame once recorded
    with tmpfs(RESERVE_BYTES + 3 * MIB) as disk:
        if disk is None:  # no mount here: a disk whose free space shrinks as the folder grows
            disk = tmp_path / "disk"
            disk.mkdir()
            real = stream.recorder.shutil.disk_usage

            def disk_usage(path):
                used = sum(f.stat().st_size for f in disk.iterdir())
                return real(path)._replace(free=max(0, RESERVE_BYTES + 3 * MIB - used))

            monkeypatch.setattr(stream.recorder.shutil, "disk_usage", disk_usage)
        record, events = disk / "out.mp4", disk / "events.jsonl"
        rc = main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--record",
                str(record),
                "--events",
                str(events),
                "--no-display",
            ]
        )
        line = one_line_error(capsys.readouterr().err, PROG)
        match = re.search(
            r"recording stopped: the disk is full \(\d+ MiB left\); (.+) keeps the "
            r"(\d+) frames written so far",
            line,
        )
        assert rc == OutputError.exit_code and match, line
        kept = int(match.group(2))
        assert match.group(1) == str(record)
        assert 0 < kept < 150 and kept % SPACE_CHECK_EVERY == 0
        assert count_frames(record) == kept  # finalized: OpenCV plays it back
        summary = json.loads(events.read_text().splitlines()[-1])
        assert summary["type"] == "summary" and summary["frames"] == kept
        assert summary["ended_by"] == "error: OutputError"
    assert not epic_threads()


class _FillingFile:
    """A text file on a disk with ``room`` bytes left: then every write fails with ENOSPC."""

    def __init__(self, file, room: int) -> None:
        self._file, self._room = file, room

    def write(self, text: str) -> int:
        if len(text) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(text)
        return self._file.write(text)

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_an_events_file_on_a_disk_that_fills_is_one_line_and_the_recording_survives(
    tmp_path, probe, make_video, capsys, monkeypatch
):
    record, room = tmp_path / "out.mp4", 8192  # room for about 30 prediction lines
    with tmpfs(256 * 1024) as disk:
        if disk is None:
            events = tmp_path / "events.jsonl"
            real_open = Path.open

            def open_(self, mode="r", *args, **kwargs):
                file = real_open(self, mode, *args, **kwargs)
                return _FillingFile(file, room) if self == events and "w" in mode else file

            monkeypatch.setattr(Path, "open", open_)
        else:
            events = disk / "events.jsonl"
            with (disk / "filler").open("wb", buffering=0) as filler:
                with contextlib.suppress(OSError):  # fill it to the last block ...
                    while True:
                        filler.write(b"\0" * 4096)
                filler.truncate(filler.tell() - room)  # ... then free a little
        rc = main(
            [
                "--source",
                str(make_video(frames=120)),
                "--model",
                str(probe),
                "--every",
                "1",
                "--record",
                str(record),
                "--events",
                str(events),
                "--no-display",
            ]
        )
        line = one_line_error(capsys.readouterr().err, PROG)
        written = events.read_text().count("\n")
    assert rc == OutputError.exit_code
    assert f"cannot write events file {events}: No space left on device" in line
    assert 10 < written < 120
    assert count_frames(record) >= written - 1  # finalized and playable up to the failure
    assert not epic_threads()


@pytest.mark.parametrize("pyav", [True, False], ids=["h264", "mp4v"])
@pytest.mark.parametrize("fps", [1000 / 7, 136.987, 999.9])
def test_a_fast_frame_rate_with_decimals_can_be_recorded(tmp_path, fps, pyav, monkeypatch):
    """MPEG-4's time base cannot hold 136.987 as 136987/1000; the OpenCV fallback rounds it.
    H.264 times each frame by its source time at 90 kHz."""
    if not pyav:
        monkeypatch.setitem(sys.modules, "av", None)  # import av fails: the OpenCV fallback
    recorder = VideoRecorder(tmp_path / "out.mp4", fps=fps)
    for i, level in enumerate(range(0, 200, 10)):
        recorder.write(np.full((48, 64, 3), level, np.uint8), i / fps)
    assert recorder.codec == ("h264" if pyav else "mp4v")
    assert recorder.close() == 20
    assert count_frames(tmp_path / "out.mp4") == 20
    assert abs(cv2.VideoCapture(str(tmp_path / "out.mp4")).get(cv2.CAP_PROP_FPS) - fps) < 0.5


@pytest.mark.parametrize("pyav", [True, False], ids=["h264", "mp4v"])
def test_a_live_camera_measured_above_65_fps_is_recorded(tmp_path, pyav, monkeypatch):
    if not pyav:
        monkeypatch.setitem(sys.modules, "av", None)  # import av fails: the OpenCV fallback
    recorder = VideoRecorder(tmp_path / "cam.mp4", fps=None)  # live: OpenCV measures the rate
    for i in range(40):
        recorder.write(np.full((48, 64, 3), 5 * i, np.uint8), i / 136.987)
    assert recorder.close() == 40
    assert count_frames(tmp_path / "cam.mp4") == 40


@pytest.mark.parametrize(
    ("fps", "stored"),
    [
        (30.0, 30.0),
        (30000 / 1001, 30000 / 1001),
        (23.976, 23.976),
        (136.987, 136.99),
        (1000.4, 1000.0),
    ],
)
def test_writable_fps_changes_only_what_mpeg4_cannot_hold(fps, stored):
    assert writable_fps(fps) == pytest.approx(stored, abs=1e-9)
