"""Sources: what --source accepts, how frames are timed, and the clear errors for bad ones."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

import cv2
import numpy as np
import pytest
from conftest import grey_frames, write_video
from onnx_models import probe_model

from stream.__main__ import main
from stream.capture import to_bgr
from stream.errors import SourceError
from stream.source import (
    CAPTURE_OPTIONS_ENV,
    PTS_JUMP_S,
    RtspTransport,
    SourceKind,
    StreamClock,
    TimeBase,
    _capture_options,
    mask_credentials,
    open_source,
    parse_source,
)


def read_all(source, limit=1000):
    frames = []
    while len(frames) < limit:
        got = source.read()
        if got is None:
            break
        frames.append(got)
    source.close()
    return frames


@pytest.mark.parametrize(
    ("text", "index"), [("webcam", 0), ("WEBCAM", 0), ("webcam:2", 2), ("0", 0), ("3", 3)]
)
def test_cameras(text, index):
    spec = parse_source(text)
    assert spec.kind is SourceKind.CAMERA and spec.target == index
    assert spec.kind.is_live


@pytest.mark.parametrize(
    "url", ["rtsp://10.0.0.2:554/stream", "http://cam.local/video.mjpg", "https://x/y.m3u8"]
)
def test_urls(url):
    spec = parse_source(url)
    assert spec.kind is SourceKind.URL and spec.target == url and spec.kind.is_live


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ftp://host/video.mp4", "unsupported URL scheme"),
        ("webcam:x", "webcam:N"),
        ("", "empty"),
        ("no/such/video.mp4", "no such file or folder"),
    ],
)
def test_bad_sources_say_why(text, needle):
    with pytest.raises(SourceError, match=needle):
        parse_source(text)


def test_folder_frames_are_sorted_naturally_and_non_images_ignored(tmp_path):
    for name in ("frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    spec = parse_source(str(tmp_path))
    assert spec.kind is SourceKind.FOLDER and not spec.kind.is_live
    assert [os.path.basename(f) for f in spec.frames] == [
        "frame_1.jpg",
        "frame_2.jpg",
        "frame_10.jpg",
    ]


def test_a_glob_of_frames(make_frame_folder):
    folder = make_frame_folder(levels=[10, 20, 30])
    spec = parse_source(str(folder / "frame_*.png"))
    assert spec.kind is SourceKind.FOLDER and len(spec.frames) == 3


def test_a_folder_without_frames(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(SourceError, match="no frame images"):
        parse_source(str(tmp_path))
    with pytest.raises(SourceError, match="no frame images match"):
        parse_source(str(tmp_path / "*.jpg"))


def test_folder_frames_are_timed_by_fps(make_frame_folder):
    folder = make_frame_folder(levels=[10, 20, 30, 40])
    frames = read_all(open_source(str(folder), fps=60))
    assert [t for _, t in frames] == [0, 1 / 60, 2 / 60, 3 / 60]
    assert [int(img.mean()) for img, _ in frames] == [10, 20, 30, 40]
    assert read_all(open_source(str(folder)))[1][1] == pytest.approx(1 / 30)  # default 30 fps


def test_video_frames_carry_the_container_time(make_video):
    path = make_video("v.mp4", frames=12, fps=25)
    source = open_source(str(path))
    assert source.fps == 25 and source.frame_count == 12 and source.frame_size == (160, 120)
    frames = read_all(source)
    assert len(frames) == 12
    assert [t for _, t in frames] == pytest.approx([i / 25 for i in range(12)])
    assert source.end_note is None


def test_decoding_into_a_given_buffer(make_video):
    source = open_source(str(make_video("v.mp4", frames=3)))
    source.read()  # the first frame was decoded while opening
    buffer = np.zeros((120, 160, 3), np.uint8)
    image, _ = source.read(buffer)
    assert image is buffer and buffer.any()
    source.close()


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "fake.mp4"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match="not a video"):
        open_source(str(path))


def test_a_camera_that_does_not_exist():
    with pytest.raises(SourceError, match="camera 97 cannot be opened"):
        open_source("webcam:97")


def test_a_url_that_refuses():
    with pytest.raises(SourceError, match="cannot connect"):
        open_source("http://127.0.0.1:9/stream.mjpg", timeout_s=2)


def test_mjpeg_over_http(mjpeg_server):
    levels = [40, 80, 120, 160, 200]
    server = mjpeg_server(grey_frames(levels), fps=50)
    source = open_source(server.url, reconnect=0)
    assert source.is_live
    frames = read_all(source)
    assert [round(img.mean() / 40) * 40 for img, _ in frames] == levels
    times = [t for _, t in frames]
    assert times[0] == 0 and times == sorted(times)  # the monotonic clock since the first frame
    assert "pass --reconnect" in source.end_note


def test_a_url_that_drops_is_reconnected(mjpeg_server):
    server = mjpeg_server(grey_frames([50, 100, 150, 200, 250]), fps=100, drop_after=4)
    source = open_source(server.url, reconnect=1)
    # Each connection gives 4 frames then drops; each drop gets its own reconnect attempts, so
    # a camera that drops now and then streams on.
    frames = read_all(source, limit=10)
    assert len(frames) == 10
    assert server.connections >= 3
    assert source.end_note is None


def test_a_url_that_stays_down_ends_cleanly_after_the_reconnects(mjpeg_server):
    server = mjpeg_server(grey_frames([50, 100, 150, 200]), fps=100)
    source = open_source(server.url, reconnect=1)
    server.close()  # gone for good after the first connection
    frames = read_all(source)
    assert len(frames) == 4
    assert "1 reconnect attempt(s) failed" in source.end_note


def test_gray_and_bgra_frames_become_bgr():
    gray = np.full((4, 5), 77, np.uint8)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 200
    assert to_bgr(gray).shape == (4, 5, 3) and (to_bgr(gray) == 77).all()
    assert to_bgr(gray[..., None]).shape == (4, 5, 3)
    assert to_bgr(bgra).shape == (4, 5, 3) and (to_bgr(bgra)[..., 2] == 200).all()
    bgr = np.zeros((4, 5, 3), np.uint8)
    assert to_bgr(bgr) is bgr
    with pytest.raises(SourceError):
        to_bgr(np.zeros((4, 5, 3), np.uint16))


def test_a_frame_folder_with_a_corrupt_image(make_frame_folder):
    folder = make_frame_folder(levels=[10, 20, 30])
    (folder / "frame_0000000002.png").write_bytes(b"not a png")
    source = open_source(str(folder))
    source.read()
    with pytest.raises(SourceError, match=r"frame_0000000002\.png"):
        source.read()


def test_grayscale_frame_images_are_read_as_bgr(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    cv2.imwrite(str(folder / "frame_0000000001.png"), np.full((8, 8), 99, np.uint8))
    image, _ = open_source(str(folder)).read()
    assert image.shape == (8, 8, 3) and (image == 99).all()


def test_a_url_that_stalls_times_out_instead_of_hanging():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []  # accepted and never answered

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        with pytest.raises(SourceError, match="no answer within 1 s"):
            open_source(f"http://127.0.0.1:{server.getsockname()[1]}/x.mjpg", timeout_s=1)
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_truncated_video_streams_what_decodes_and_says_it_ended_early(tmp_path):
    full = write_video(tmp_path / "full.avi", grey_frames(range(0, 240, 4)))  # 60 frames
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    source = open_source(str(cut))
    frames = read_all(source)
    assert 0 < len(frames) < 60
    assert source.end_note.startswith(f"{cut} ended early: decoded {len(frames)} of 60 frames")


def test_a_video_without_frames(tmp_path):
    empty = tmp_path / "empty.mp4"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 30, (160, 120)).release()
    with pytest.raises(SourceError, match=r"empty\.mp4"):
        open_source(str(empty))


# -- one clock per stream -------------------------------------------------------------------------


def stamps(clock: StreamClock, frames) -> list[float]:
    return [round(clock.stamp(pts, arrival), 6) for pts, arrival in frames]


def test_a_burst_keeps_the_streams_own_spacing():
    # 1 s of 25 fps video arrives within 25 ms (a server's preroll), then frames come in real time.
    burst = [(i / 25, 100.0 + i * 0.001) for i in range(25)]
    steady = [(i / 25, 100.0 + 0.025 + (i - 24) / 25) for i in range(25, 50)]
    times = stamps(StreamClock(), burst + steady)
    assert times == pytest.approx([i / 25 for i in range(50)])


def test_the_timeline_starts_at_zero_whatever_the_first_pts():
    assert stamps(StreamClock(), [(3600.0, 5.0), (3600.04, 5.04)]) == [0.0, 0.04]


def test_a_reconnect_continues_the_timeline_by_the_time_it_took():
    clock = StreamClock()
    before = stamps(clock, [(i / 25, 10 + i / 25) for i in range(10)])  # up to 0.36 s
    # The new session starts its clock at 0 again, 2 s later, with a burst of its own.
    after = stamps(clock, [(i / 25, 10 + 0.36 + 2.0 + i * 0.001) for i in range(5)])
    assert after[0] == pytest.approx(before[-1] + 2.0, abs=1e-3)
    assert np.diff(after) == pytest.approx([0.04] * 4)


def test_a_wrap_or_a_reset_of_the_pts_costs_one_frame_interval():
    clock = StreamClock()
    times = stamps(clock, [(95443.68, 0.0), (95443.72, 0.04), (0.0, 0.08), (0.04, 0.12)])
    assert times == pytest.approx([0.0, 0.04, 0.08, 0.12])


def test_a_pts_that_leaps_ahead_of_arrival_is_a_reset_not_a_skip():
    clock = StreamClock()
    times = stamps(clock, [(0.0, 0.0), (0.04, 0.04), (0.08 + 3600, 0.08), (0.12 + 3600, 0.12)])
    assert times == pytest.approx([0.0, 0.04, 0.08, 0.12])
    # A leap the arrival gap explains (the camera kept its clock through a stall) is kept.
    clock = StreamClock()
    times = stamps(clock, [(0.0, 0.0), (0.04, 0.04), (30.0, 30.0)])
    assert times == pytest.approx([0.0, 0.04, 30.0])
    assert PTS_JUMP_S < 30


def test_without_pts_the_timeline_is_arrival_time():
    times = stamps(StreamClock(), [(None, 7.0), (None, 7.1), (float("nan"), 7.25), (None, 7.25)])
    assert times[:3] == pytest.approx([0.0, 0.1, 0.25])
    assert times[3] > times[2]  # two frames that arrive together still get increasing times


def test_a_repeated_pts_keeps_the_timeline_increasing():
    times = stamps(StreamClock(), [(0.0, 1.0), (0.0, 1.001), (0.04, 1.002), (0.08, 1.003)])
    assert np.all(np.diff(times) > 0)
    assert times[3] - times[2] == pytest.approx(0.04)


def test_mjpeg_carries_no_timestamps_and_keeps_arrival_time(mjpeg_server):
    # FFmpeg invents 25 fps timestamps for multipart MJPEG; a 10 fps camera must not be taken
    # for a 25 fps one.
    server = mjpeg_server(grey_frames([40, 80, 120, 160, 200, 240, 40, 80]), fps=10)
    source = open_source(server.url, reconnect=0)
    assert source.time_base is TimeBase.ARRIVAL
    times = [t for _, t in read_all(source)]
    assert len(times) == 8 and np.all(np.diff(times) > 0)
    assert times[-1] >= 0.35  # 7 intervals of 0.1 s, less what FFmpeg buffered at the open


def test_files_and_folders_name_their_time_base(make_video, make_frame_folder):
    assert open_source(str(make_video(frames=3))).time_base is TimeBase.PRESENTATION
    assert open_source(str(make_frame_folder(levels=[1, 2]))).time_base is TimeBase.FRAME_RATE


# -- credentials and transport --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/live", "rtsp://admin:***@10.0.0.5:554/live"),
        ("rtsp://admin:p%40ss%3A1@cam/s", "rtsp://admin:***@cam/s"),
        ("rtsp://admin:p@ss@cam/s", "rtsp://admin:***@cam/s"),  # an unescaped @ in the password
        ("rtsp://admin@cam/s", "rtsp://admin@cam/s"),
        (
            "http://cam/video.mjpg?user=admin&password=hunter2&res=hd",
            "http://cam/video.mjpg?user=admin&password=***&res=hd",
        ),
        ("https://cam/live.m3u8?token=abc", "https://cam/live.m3u8?token=***"),
        ("rtsp://cam/s?channel=1", "rtsp://cam/s?channel=1"),
        ("clip.mp4", "clip.mp4"),
    ],
)
def test_credentials_are_masked(url, shown):
    assert mask_credentials(url) == shown
    assert "hunter2" not in mask_credentials(url)


def test_a_url_with_credentials_is_named_and_refused_masked():
    spec = parse_source("rtsp://admin:hunter2@127.0.0.1:9/live")
    assert spec.name == "rtsp://admin:***@127.0.0.1:9/live"
    with pytest.raises(SourceError) as refused:
        open_source(spec, timeout_s=2)
    assert "rtsp://admin:***@127.0.0.1:9/live" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(SourceError) as unsupported:
        parse_source("ftp://admin:hunter2@cam/x")
    assert "hunter2" not in str(unsupported.value)


def test_the_rtsp_transport_joins_the_users_own_capture_options(monkeypatch):
    monkeypatch.delenv(CAPTURE_OPTIONS_ENV, raising=False)
    assert _capture_options(RtspTransport.TCP) == "rtsp_transport;tcp"
    monkeypatch.setenv(CAPTURE_OPTIONS_ENV, "rtsp_transport;tcp|buffer_size;1024000")
    assert _capture_options(RtspTransport.UDP) == "buffer_size;1024000|rtsp_transport;udp"


def test_a_non_positive_timeout_is_refused():
    with pytest.raises(SourceError, match="--timeout must be a positive number of seconds"):
        open_source("http://127.0.0.1:9/x.mjpg", timeout_s=0)


# -- --fps: frame folders and files that state no rate --------------------------------------------


def test_fps_does_not_override_a_files_stated_rate(make_video, caplog):
    path = make_video("v.mp4", frames=10, fps=25)
    caplog.set_level(logging.WARNING, logger="stream")
    source = open_source(str(path), fps=60)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("--fps 60 ignored: v.mp4 states 25 fps")
    assert source.fps == 25
    assert [t for _, t in read_all(source)] == pytest.approx([i / 25 for i in range(10)])
    caplog.clear()
    assert open_source(str(path), fps=25).fps == 25  # the same rate: nothing to say
    assert not caplog.records


def test_fps_on_a_file_through_the_cli_warns_once_and_keeps_the_files_spacing(
    tmp_path, make_video, capsys
):
    path = make_video("v.mp4", frames=30, fps=30)
    probe = probe_model(tmp_path / "probe.onnx", num_frames=4, image_size=16, clip_seconds=0.3)
    events = tmp_path / "events.jsonl"
    assert (
        main(
            [
                "--source",
                str(path),
                "--model",
                str(probe),
                "--events",
                str(events),
                "--no-display",
                "--fps",
                "60",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err.count("--fps 60 ignored") == 1, err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    predictions = [e for e in lines if e["type"] == "prediction"]
    # 30 fps: a prediction every 8 frames (--fps 60 would have made it 15), at the file's times.
    assert [p["frame_index"] for p in predictions] == [0, 8, 16, 24]
    assert [p["time_s"] for p in predictions] == pytest.approx(
        [0, 8 / 30, 16 / 30, 24 / 30], abs=1e-6
    )
    assert lines[-1]["every"] == 8


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_timeout_that_cannot_work_is_one_line(make_video, capsys, value):
    rc = main(["--source", str(make_video()), "--timeout", value, "--no-display"])
    err = capsys.readouterr().err
    assert rc == 2
    assert (
        err.strip()
        == f"epic-stream: error: --timeout must be a positive number of seconds, got {float(value)}"
    )
