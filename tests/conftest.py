"""Shared fixtures: generated videos, frame folders and a local MJPEG-over-HTTP camera.

Everything is made on the fly, small (160x120 by default) and fast; nothing is downloaded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


# Fields that differ between two runs of the same input: timings and wall-clock times.
TIMING_KEYS = frozenset(
    {
        "latency_ms",
        "latency_ms_p50",
        "latency_ms_p95",
        "inference_ms_mean",
        "fps",
        "model_fps",
        "wall_s",
        "wall_time",
        "wall_start",
        "wall_end",
    }
)


def read_events(path: Path) -> list[dict]:
    """Every line of an ``--events`` file, parsed."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def without_timing(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in events]


def slow_runner(monkeypatch, seconds: float) -> None:
    """Make every model run take at least ``seconds`` without using the CPU."""
    from stream.runtime import Runner

    original = Runner.run

    def run(self, n=1):
        time.sleep(seconds)
        return original(self, n)

    monkeypatch.setattr(Runner, "run", run)


def grey_frames(levels: Sequence[int], size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    """Solid BGR frames of ``size`` (width, height), one per grey level."""
    width, height = size
    return [np.full((height, width, 3), int(level), np.uint8) for level in levels]


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 30.0) -> Path:
    path = Path(path)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (width, height)
    )
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def count_frames(path: Path) -> int:
    """Frames that OpenCV can decode from ``path`` (by reading them all, not trusting the header)."""
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture
def make_video(tmp_path) -> Callable[..., Path]:
    """``make_video(name, levels=None, frames=30, size=(160, 120), fps=30)``: a solid-grey video.

    Frame i has grey level ``levels[i]`` (default: a ramp), so frames can be told apart after
    lossy coding when the levels are a few steps apart.
    """

    def make(
        name: str = "clip.mp4",
        levels: Sequence[int] | None = None,
        frames: int = 30,
        size: tuple[int, int] = (160, 120),
        fps: float = 30.0,
    ) -> Path:
        if levels is None:
            levels = [round(20 + 200 * i / max(1, frames - 1)) for i in range(frames)]
        return write_video(tmp_path / name, grey_frames(levels, size), fps)

    return make


@pytest.fixture
def make_frame_folder(tmp_path) -> Callable[..., Path]:
    """``make_frame_folder(name, levels, size=(160, 120), ext='.png')``: EPIC-style frame images.

    Files are ``frame_0000000001.png``, ... (1-based, 10 digits, as EPIC-KITCHENS names them);
    PNG keeps the grey levels exact.
    """

    def make(
        name: str = "frames",
        levels: Sequence[int] = range(10, 250, 10),
        size: tuple[int, int] = (160, 120),
        ext: str = ".png",
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for i, frame in enumerate(grey_frames(levels, size)):
            assert cv2.imwrite(str(folder / f"frame_{i + 1:010d}{ext}"), frame)
        return folder

    return make


class MjpegServer:
    """A local multipart/x-mixed-replace camera: serves ``frames`` at ``fps`` per connection.

    ``drop_after`` ends each connection after that many frames (a camera that drops);
    ``connections`` counts the clients that connected.
    """

    def __init__(
        self, frames: Sequence[np.ndarray], fps: float = 30.0, drop_after: int | None = None
    ):
        self.jpegs = [
            cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames
        ]
        self.fps = fps
        self.drop_after = drop_after
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                limit = server.drop_after or len(server.jpegs)
                for jpeg in server.jpegs[:limit]:
                    part = (
                        b"--frame\r\nContent-Type: image/jpeg\r\n"
                        + b"Content-Length: %d\r\n\r\n" % len(jpeg)
                        + jpeg
                        + b"\r\n"
                    )
                    try:
                        self.wfile.write(part)
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    time.sleep(1.0 / server.fps)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def mjpeg_server() -> Callable[..., MjpegServer]:
    """``mjpeg_server(frames, fps=30, drop_after=None)`` -> a running :class:`MjpegServer`."""
    servers: list[MjpegServer] = []

    def start(
        frames: Sequence[np.ndarray], fps: float = 30.0, drop_after: int | None = None
    ) -> MjpegServer:
        server = MjpegServer(frames, fps, drop_after)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
