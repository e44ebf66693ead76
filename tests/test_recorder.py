"""H.264 recordings: the codec, each frame at its source time, and what a hard kill leaves.

Every check reads the real file back with PyAV (codec, pixel format, each frame's pts) or OpenCV
(which can decode H.264 here, though it cannot encode it). Frames carry their source index as a
row of black and white cells below the overlay, so a recorded frame says which source frame it
is, whatever the encoder did to it.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import count_frames, write_video
from onnx_models import probe_model
from reliability_util import mp4_boxes, one_line_error, tmpfs

import stream.recorder
import stream.source
from stream.__main__ import main
from stream.errors import OutputError
from stream.recorder import KEYFRAME_EVERY_S, VideoRecorder

ROOT = Path(__file__).resolve().parents[1]
FPS = 30.0
SIZE = (320, 240)  # the overlay leaves rows 125-207 of this size untouched
BITS, CELL_TOP, CELL_BOTTOM = 10, 140, 190  # frame index in 10 cells of 32 px: up to 1023
KILL_AT_S = 4.5  # between two keyframes (forced on whole seconds), so a fragment is open


def coded_frame(index: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    width, height = size
    frame = np.full((height, width, 3), 110, np.uint8)
    cell = width // BITS
    for bit in range(BITS):
        level = 230 if index >> bit & 1 else 25
        frame[CELL_TOP:CELL_BOTTOM, bit * cell : (bit + 1) * cell] = level
    return frame


def frame_index(frame: np.ndarray) -> int:
    """The index :func:`coded_frame` drew, read from the middle of each cell."""
    cell = frame.shape[1] // BITS
    index = 0
    for bit in range(BITS):
        middle = frame[CELL_TOP + 8 : CELL_BOTTOM - 8, bit * cell + 6 : (bit + 1) * cell - 6]
        index |= int(middle.mean() > 128) << bit
    return index


def coded_video(path: Path, frames: int) -> Path:
    """Motion JPEG at 30 fps: each frame's index survives, and the source decodes fast."""
    return write_video(path, [coded_frame(i) for i in range(frames)], FPS)


def decoded(path: Path) -> list[tuple[float, int]]:
    """(time in seconds from the pts, source index) of every frame PyAV decodes from ``path``."""
    with av.open(str(path)) as container:
        return [
            (float(frame.time), frame_index(frame.to_ndarray(format="bgr24")))
            for frame in container.decode(video=0)
        ]


def video_stream_info(path: Path) -> tuple[str, str, int, int]:
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.name, context.pix_fmt, context.width, context.height


def events_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)


@pytest.fixture
def without_pyav(monkeypatch):
    """``import av`` fails inside stream.recorder, as where PyAV is not installed."""
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setattr(stream.recorder, "_fallback_said", False)


# -- codec and times ------------------------------------------------------------------------------


def test_a_recording_is_h264_yuv420p_with_every_frame_at_its_source_time(tmp_path, probe):
    video = coded_video(tmp_path / "coded.avi", 45)
    record = tmp_path / "out.mp4"
    assert (
        main(
            ["--source", str(video), "--model", str(probe), "--record", str(record), "--no-display"]
        )
        == 0
    )
    assert video_stream_info(record) == ("h264", "yuv420p", *SIZE)
    frames = decoded(record)
    assert [index for _, index in frames] == list(range(45))
    assert [t for t, _ in frames] == pytest.approx([i / FPS for i in range(45)], abs=1e-4)
    assert count_frames(record) == 45  # OpenCV plays it too


@pytest.mark.parametrize("suffix", [".mp4", ".m4v", ".mov", ".mkv"])
def test_irregular_source_times_are_kept(tmp_path, suffix):
    """A live source that stalls and bursts: each frame is shown at its own time, not at a
    constant rate; a repeated time still gets a later pts (the muxer needs them increasing)."""
    times = [0.0, 0.033, 0.066, 0.5, 0.52, 0.52, 1.9, 2.0, 3.75, 3.8]
    path = tmp_path / f"live{suffix}"
    recorder = VideoRecorder(path, fps=None)
    for i, t in enumerate(times):
        recorder.write(coded_frame(i), t + 12.5)  # the recording's clock starts at its first frame
    assert recorder.close() == len(times)
    assert recorder.codec == "h264"
    assert video_stream_info(path)[:2] == ("h264", "yuv420p")
    frames = decoded(path)
    assert [index for _, index in frames] == list(range(len(times)))
    shown = [t for t, _ in frames]
    tick = 1e-3 if suffix == ".mkv" else 1 / 90000
    assert shown == pytest.approx(times, abs=1.5 * tick)  # the repeated time: one tick later
    assert all(b > a for a, b in itertools.pairwise(shown))


def test_odd_sizes_are_padded_to_even_for_yuv420p(tmp_path):
    recorder = VideoRecorder(tmp_path / "odd.mp4", fps=FPS)
    for i in range(5):
        recorder.write(np.full((121, 161, 3), 40 * i, np.uint8), i / FPS)
    assert recorder.close() == 5
    assert video_stream_info(tmp_path / "odd.mp4") == ("h264", "yuv420p", 162, 122)
    assert count_frames(tmp_path / "odd.mp4") == 5


def test_avi_stays_motion_jpeg_at_a_constant_rate(tmp_path):
    recorder = VideoRecorder(tmp_path / "out.avi", fps=FPS)
    for i in range(10):
        recorder.write(coded_frame(i), i / FPS)
    assert recorder.codec == "MJPG"
    assert recorder.close() == 10
    assert video_stream_info(tmp_path / "out.avi")[0] == "mjpeg"
    assert [index for _, index in decoded(tmp_path / "out.avi")] == list(range(10))


def test_the_mp4_is_fragmented_with_a_keyframe_at_least_every_second(tmp_path):
    """Fragments start at keyframes; the keyframes are forced by source time, so a slow or
    irregular source gets them as often as a fast one."""
    path = tmp_path / "frag.mp4"
    recorder = VideoRecorder(path, fps=None)
    times = [i / FPS for i in range(90)] + [3.0 + i * 0.4 for i in range(10)]  # then 2.5 fps
    for i, t in enumerate(times):
        recorder.write(coded_frame(i), t)
    recorder.close()
    kinds = [kind for kind, *_ in mp4_boxes(path.read_bytes())]
    assert kinds[:2] == ["ftyp", "moov"] and kinds.count("moof") >= 5
    with av.open(str(path)) as container:
        keys = [float(f.time) for f in container.decode(video=0) if f.key_frame]
    gaps = np.diff([*keys, times[-1]])
    assert gaps.max() <= KEYFRAME_EVERY_S + 0.4 + 1e-6  # at most a second, plus one frame
    assert keys[0] == 0.0 and len(keys) >= 5


# -- a live recording keeps real time ------------------------------------------------------------


def test_a_realtime_recording_with_drops_spans_the_wall_time(tmp_path, probe, monkeypatch):
    """A decoder that stalls 150 ms every 12th frame falls behind the clock and drops frames to
    catch up, as a camera would. Written at a constant rate, the recording would be short by the
    drops; timed by source time, it spans the run's wall time."""
    read = stream.source.CaptureSource._read_next
    reads = itertools.count(1)

    def hiccup(self, into, stop):
        if next(reads) % 12 == 0:
            time.sleep(0.15)
        return read(self, into, stop)

    monkeypatch.setattr(stream.source.CaptureSource, "_read_next", hiccup)
    frames = 360  # 12 s: start-up and shutdown (about 0.1 s) stay well inside the 2%
    video = coded_video(tmp_path / "coded.avi", frames)
    record, events = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    assert (
        main(
            [
                "--source",
                str(video),
                "--model",
                str(probe),
                "--realtime",
                "--record",
                str(record),
                "--events",
                str(events),
                "--no-display",
            ]
        )
        == 0
    )
    summary = events_of(events)[-1]
    assert summary["dropped_frames"] > frames / 8  # the drops were forced (about a quarter)
    recorded = decoded(record)
    assert len(recorded) == summary["frames"]
    # Each frame at its source time: index / fps.
    assert [t for t, _ in recorded] == pytest.approx([i / FPS for _, i in recorded], abs=1e-4)
    duration = recorded[-1][0] - recorded[0][0] + 1 / FPS  # the last frame lasts one interval
    assert duration == pytest.approx(summary["wall_s"], rel=0.02)


# -- a hard kill ---------------------------------------------------------------------------------


def test_after_sigkill_the_mp4_plays_every_frame_but_the_last_two_seconds(tmp_path, probe):
    video = coded_video(tmp_path / "coded.avi", 600)  # 20 s, far more than the run sees
    record, events = tmp_path / "out.mp4", tmp_path / "e.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "--source",
            str(video),
            "--model",
            str(probe),
            "--realtime",
            "--record",
            str(record),
            "--events",
            str(events),
            "--no-display",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        last = 0.0
        while last < KILL_AT_S and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if events.exists():
                lines = [json.loads(x) for x in events.read_text().splitlines()]
                last = max((x["time_s"] for x in lines if x["type"] == "prediction"), default=0.0)
        assert proc.poll() is None, "the stream ended before it was killed"
        assert last >= KILL_AT_S
        proc.kill()  # SIGKILL: no handler, no finalization
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Presented by the time of the kill: at least up to the last prediction written.
    shown_s = max(x["time_s"] for x in events_of(events) if x["type"] == "prediction")
    recorded = decoded(record)  # playable: no index at the end is needed
    assert recorded, "nothing playable was left"
    times = [t for t, _ in recorded]
    assert times == pytest.approx([i / FPS for _, i in recorded], abs=1e-4)
    assert recorded[0][1] == 0 and times[-1] >= shown_s - 2.0  # lacks at most the last 2 s
    indices = [i for _, i in recorded]
    assert indices == sorted(set(indices))  # in order (gaps are the run's own drops)
    assert count_frames(record) == len(recorded)


# A live recorder in a child process: frames stamped by the wall clock, each reported on stdout
# once the recorder has taken it, so the parent knows exactly what was written before the kill.
LIVE_RECORDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from test_recorder import coded_frame
from stream.recorder import VideoRecorder
recorder = VideoRecorder(sys.argv[1], fps=None)
start = time.monotonic()
for index in range(1000):
    time_s = time.monotonic() - start
    recorder.write(coded_frame(index), time_s)
    print(index, repr(time_s), flush=True)
    time.sleep(1 / 30)
"""


def test_after_sigkill_every_frame_written_plays_but_the_last_two_seconds(tmp_path):
    record = tmp_path / "live.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_RECORDER, str(record), str(ROOT / "tests")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    written: list[float] = []
    try:
        for line in proc.stdout:
            written.append(float(line.split()[1]))
            if written[-1] >= KILL_AT_S:
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and written[-1] >= KILL_AT_S
    recorded = decoded(record)
    # Every frame written, from the first, in order, at its time, up to at most 2 s before the kill.
    assert [i for _, i in recorded] == list(range(len(recorded)))
    expected = [t - written[0] for t in written[: len(recorded)]]  # the first frame is 0
    assert [t for t, _ in recorded] == pytest.approx(expected, abs=1e-4)
    assert recorded[-1][0] >= written[-1] - 2.0
    assert len(recorded) < len(written)  # the open fragment was lost: the kill was real


def test_a_write_that_fails_past_the_reserve_is_one_line(tmp_path, probe, capsys, monkeypatch):
    """Another program fills the disk between two free-space checks: the muxer's ENOSPC ends the
    run with one line, and the fragments written before it play."""
    monkeypatch.setattr(stream.recorder, "RESERVE_BYTES", 0)  # the checks never stop it first
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(8)]
    video = write_video(tmp_path / "noise.avi", [noise[i % 8] for i in range(150)])
    with tmpfs(1 << 20) as disk:  # about 55 noise frames of H.264
        if disk is None:  # no mount here: the muxer's write fails as on a full disk
            disk = tmp_path
            write = stream.recorder._H264File.write

            def filling(self, frame, time_s):
                if time_s >= 50 / FPS:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                write(self, frame, time_s)

            monkeypatch.setattr(stream.recorder._H264File, "write", filling)
        record = disk / "out.mp4"
        rc = main(
            ["--source", str(video), "--model", str(probe), "--record", str(record), "--no-display"]
        )
        line = one_line_error(capsys.readouterr().err, "epic-stream")
        playable = count_frames(record)
    assert rc == OutputError.exit_code
    match = re.search(
        r"recording stopped: the video could not be written \(.*No space left on "
        r"device.*\); (.+) plays up to its last whole fragment, at most a second "
        r"before frame (\d+)$",
        line,
    )
    assert match and match.group(1) == str(record), line
    assert int(match.group(2)) - FPS <= playable <= int(match.group(2))


# -- without PyAV ---------------------------------------------------------------------------------


def test_without_pyav_opencv_records_mp4v_and_says_so_once(tmp_path, probe, without_pyav, capsys):
    video = coded_video(tmp_path / "coded.avi", 20)
    for name in ("one.mp4", "two.mp4"):
        assert (
            main(
                [
                    "--source",
                    str(video),
                    "--model",
                    str(probe),
                    "--record",
                    str(tmp_path / name),
                    "--no-display",
                ]
            )
            == 0
        )
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "PyAV cannot be imported" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("epic-stream: warning: ")
    assert "mp4v" in warnings[0] and "pip install av" in warnings[0]
    for name in ("one.mp4", "two.mp4"):  # read with this module's PyAV, imported before
        assert video_stream_info(tmp_path / name)[0] == "mpeg4"  # MPEG-4 Part 2
        assert count_frames(tmp_path / name) == 20


def test_without_pyav_avi_says_nothing(tmp_path, without_pyav, caplog):
    with caplog.at_level(logging.WARNING, logger="stream.recorder"):
        recorder = VideoRecorder(tmp_path / "out.avi", fps=FPS)
        recorder.write(coded_frame(0), 0.0)
        recorder.close()
    assert caplog.records == []  # .avi never needed PyAV
