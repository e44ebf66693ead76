"""Video sources: what ``--source`` names, opened and read one frame at a time with its source time.

``--source`` accepts a camera (``webcam``, ``webcam:N`` or a bare integer), a video file, a URL
(rtsp://, http://, https://: IP cameras and MJPEG streams), a folder of frame images (EPIC-KITCHENS
``frame_0000000001.jpg`` style, in sorted order) or a glob of them.

Each frame carries its *source time* in seconds, which is what the inference worker spaces a clip
by:

* video file: the container's timestamp of the frame (``CAP_PROP_POS_MSEC``), or index / fps when
  the container gives none;
* folder of frames: index / ``--fps`` (default 30);
* camera or URL: the monotonic clock since the first frame.

A source is opened eagerly: the first frame is read by :func:`open_source`, so a file that is not a
video, a camera that does not exist or a URL that refuses fail with a :class:`SourceError` before
the stream starts, never halfway through.
"""

from __future__ import annotations

import glob
import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from stream.errors import SourceError

log = logging.getLogger(__name__)

FRAME_SUFFIXES = frozenset((".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"))
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
DEFAULT_FOLDER_FPS = 30.0
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RECONNECTS = 3
# Backoff between reconnect attempts: 0.5 s, 1 s, 2 s, ... never more than this.
MAX_BACKOFF_S = 8.0
_GLOB_CHARS = re.compile(r"[*?\[]")


class SourceKind(Enum):
    """What ``--source`` names; cameras and URLs are live, files and frame folders are not."""

    CAMERA = "camera"
    FILE = "file"
    URL = "url"
    FOLDER = "folder"  # a folder or a glob of frame images

    @property
    def is_live(self) -> bool:
        return self in (SourceKind.CAMERA, SourceKind.URL)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: its kind, the camera index / path / URL, and a folder's frames."""

    kind: SourceKind
    target: str | int
    frames: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Short name for the overlay and the console."""
        if self.kind is SourceKind.CAMERA:
            return f"webcam:{self.target}"
        if self.kind is SourceKind.URL:
            return str(self.target)
        return Path(str(self.target)).name or str(self.target)


def _natural_key(path: str) -> list:
    # frame_2.jpg before frame_10.jpg even without zero padding; EPIC pads, others may not.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _frame_files(paths) -> tuple[str, ...]:
    files = [str(p) for p in paths if Path(p).suffix.lower() in FRAME_SUFFIXES and Path(p).is_file()]
    return tuple(sorted(files, key=_natural_key))


def parse_source(text: str) -> SourceSpec:
    """Turn ``--source`` into a :class:`SourceSpec`; raise :class:`SourceError` when it names nothing."""
    text = str(text).strip()
    if not text:
        raise SourceError("--source is empty; give a video file, a folder of frames, a URL or webcam")
    lowered = text.lower()
    if lowered == "webcam":
        return SourceSpec(SourceKind.CAMERA, 0)
    if lowered.startswith("webcam:"):
        index = text.split(":", 1)[1]
        if not index.isdigit():
            raise SourceError(f"--source {text}: expected webcam:N with N a camera number, e.g. webcam:1")
        return SourceSpec(SourceKind.CAMERA, int(index))
    if text.isdigit():
        return SourceSpec(SourceKind.CAMERA, int(text))
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(
                f"--source {text}: unsupported URL scheme '{scheme}://' "
                f"(supported: {', '.join(s + '://' for s in URL_SCHEMES)})"
            )
        return SourceSpec(SourceKind.URL, text)
    path = Path(text).expanduser()
    if path.is_dir():
        frames = _frame_files(path.iterdir())
        if not frames:
            raise SourceError(
                f"--source {text}: the folder has no frame images "
                f"({', '.join(sorted(FRAME_SUFFIXES))}); give a folder of frames or a video file"
            )
        return SourceSpec(SourceKind.FOLDER, str(path), frames)
    if path.is_file():
        return SourceSpec(SourceKind.FILE, str(path))
    if _GLOB_CHARS.search(text):
        frames = _frame_files(glob.glob(str(path)))
        if not frames:
            raise SourceError(f"--source {text}: no frame images match this pattern")
        return SourceSpec(SourceKind.FOLDER, text, frames)
    raise SourceError(
        f"--source {text}: no such file or folder (expected a video file, a folder of frames, "
        "a glob, a URL, webcam or webcam:N)"
    )


class VideoSource(ABC):
    """An opened source. One thread (the capture thread) reads it; :meth:`close` may come from any."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.frames_read = 0
        # Set when the source ended for a reason the user should hear about (a truncated file,
        # a stream that dropped for good); None for a normal end.
        self.end_note: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_live(self) -> bool:
        return self.spec.kind.is_live

    @property
    @abstractmethod
    def fps(self) -> float | None:
        """The nominal frame rate, when the source states one."""

    @property
    def frame_count(self) -> int | None:
        """Frames in the source when known (files and folders), else None."""
        return None

    @property
    @abstractmethod
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the first frame."""

    @abstractmethod
    def read(self, into: np.ndarray | None = None, stop: threading.Event | None = None):
        """Return ``(image, time_s)`` for the next frame, or None at the end of the stream.

        ``into`` is a buffer the frame may be decoded into (the ring slot it will live in); the
        returned image is ``into`` when that worked and a new array otherwise. ``stop`` cuts
        reconnect waits short.
        """

    def close(self) -> None:  # noqa: B027 - sources without resources need nothing here
        """Release the device, file or connection."""


class CaptureSource(VideoSource):
    """A file, camera or URL read through ``cv2.VideoCapture``."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        fps: float | None = None,
        reconnect: int = DEFAULT_RECONNECTS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(spec)
        self._reconnect = max(0, int(reconnect))
        self._timeout_ms = int(timeout_s * 1000)
        self._lock = threading.Lock()
        self._close_requested = False
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(self._open_failure())
        stated = self._cap.get(cv2.CAP_PROP_FPS)
        stated = stated if math.isfinite(stated) and 0 < stated < 1000 else None
        self._fps = fps or stated or (None if spec.kind.is_live else DEFAULT_FOLDER_FPS)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._count = int(count) if spec.kind is SourceKind.FILE and 0 < count < 1e9 else None
        self._last_time_s = -math.inf
        self._origin: float | None = None
        first = self._grab_first()
        self._pending: np.ndarray | None = first
        height, width = first.shape[:2]
        self._size = (width, height)

    # -- opening ---------------------------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture | None:
        kind, target = self.spec.kind, self.spec.target
        if kind is SourceKind.URL:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._timeout_ms,
            ]  # fmt: skip
            cap = cv2.VideoCapture(str(target), cv2.CAP_FFMPEG, params)
        elif kind is SourceKind.CAMERA:
            cap = cv2.VideoCapture(int(target))
        else:
            cap = cv2.VideoCapture(str(target))
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _open_failure(self) -> str:
        kind, target = self.spec.kind, self.spec.target
        if kind is SourceKind.CAMERA:
            return (
                f"camera {target} cannot be opened: it does not exist or another program is using "
                "it (try webcam:N with another N)"
            )
        if kind is SourceKind.URL:
            return (
                f"cannot connect to {target} (refused, unreachable or no answer within "
                f"{self._timeout_ms / 1000:g} s); check the address and that the camera is streaming"
            )
        return f"{target} is not a video that can be read (unknown format, not a video, or corrupt)"

    def _grab_first(self) -> np.ndarray:
        ok, image = self._cap.read()
        if ok and image is not None:
            return image
        self._cap.release()
        if self.spec.kind is SourceKind.FILE:
            raise SourceError(f"{self.spec.target}: no frames could be decoded (empty or corrupt video)")
        raise SourceError(f"{self.name} opened but sent no frames")

    # -- reading ---------------------------------------------------------------------------------

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def frame_count(self) -> int | None:
        return self._count

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._size

    def read(self, into: np.ndarray | None = None, stop: threading.Event | None = None):
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            image = self._read_next(into, stop)
            if image is None:
                return None
        time_s = self._stamp()
        self.frames_read += 1
        return image, time_s

    def _read_next(self, into: np.ndarray | None, stop: threading.Event | None) -> np.ndarray | None:
        while True:
            with self._lock:
                cap = self._cap
                if cap is None:  # closed from another thread
                    return None
                # OpenCV decodes into ``into`` when it fits and allocates otherwise (a size change).
                if into is not None:
                    ok, image = cap.read(into)
                else:
                    ok, image = cap.read()
                if self._close_requested:
                    self._cap = None
                    cap.release()
                    return None
            if ok and image is not None:
                return image
            if not self.is_live:
                self._note_file_end()
                return None
            if not self._reconnect_live(stop):
                return None

    def _note_file_end(self) -> None:
        # Containers state their frame count; a file that stops well short of it was cut off.
        if self._count is not None and self._count - self.frames_read > max(2, self._count // 100):
            self.end_note = (
                f"{self.spec.target} ended early: decoded {self.frames_read} of {self._count} "
                "frames (the file may be truncated)"
            )

    def _reconnect_live(self, stop: threading.Event | None) -> bool:
        """Reopen a live source that stopped sending, with backoff; False when it stays gone."""
        with self._lock:
            if self._cap is not None:
                self._cap.release()
        for attempt in range(1, self._reconnect + 1):
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1))
            log.warning(
                "%s stopped sending frames; reconnecting in %.1f s (%d/%d)",
                self.name, delay, attempt, self._reconnect,
            )  # fmt: skip
            if stop is not None and stop.wait(delay):
                return False
            if stop is None:
                time.sleep(delay)
            cap = self._open()
            with self._lock:
                if self._cap is None:  # closed meanwhile
                    if cap is not None:
                        cap.release()
                    return False
                if cap is not None:
                    self._cap = cap
                    log.warning("%s reconnected", self.name)
                    return True
        self.end_note = (
            f"{self.name} stopped sending frames and {self._reconnect} reconnect attempt(s) failed"
            if self._reconnect
            else f"{self.name} stopped sending frames (pass --reconnect N to retry)"
        )
        with self._lock:
            self._cap = None
        return False

    def _stamp(self) -> float:
        if self.is_live:
            now = time.monotonic()
            if self._origin is None:
                self._origin = now
            return now - self._origin
        # A file: its own timestamps when they move forward, else index / fps, so that source
        # time is always increasing (the worker's clip spacing relies on it).
        with self._lock:
            pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self._cap is not None else -1.0
        time_s = pos_ms / 1000.0
        if not (math.isfinite(time_s) and time_s >= 0 and time_s > self._last_time_s):
            time_s = (
                0.0 if self._last_time_s == -math.inf else self._last_time_s + 1.0 / self._fps
            )
        self._last_time_s = time_s
        return time_s

    def close(self) -> None:
        # A read in progress holds the lock (a stalled URL holds it up to its timeout); releasing
        # the capture under it would crash, so the reader is asked to release it when it returns.
        if not self._lock.acquire(timeout=0.25):
            self._close_requested = True
            return
        try:
            cap, self._cap = self._cap, None
        finally:
            self._lock.release()
        if cap is not None:
            cap.release()


class FolderSource(VideoSource):
    """Frame images in sorted order, timed at index / fps."""

    def __init__(self, spec: SourceSpec, *, fps: float | None = None) -> None:
        super().__init__(spec)
        self._fps = float(fps or DEFAULT_FOLDER_FPS)
        self._index = 0
        first = self._load(0)
        self._pending: np.ndarray | None = first
        height, width = first.shape[:2]
        self._size = (width, height)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def frame_count(self) -> int:
        return len(self.spec.frames)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._size

    def _load(self, index: int) -> np.ndarray:
        path = self.spec.frames[index]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read frame image {path} (missing, unreadable or corrupt)")
        return image

    def read(self, into: np.ndarray | None = None, stop: threading.Event | None = None):
        if self._index >= len(self.spec.frames):
            return None
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            image = self._load(self._index)
        time_s = self._index / self._fps
        self._index += 1
        self.frames_read += 1
        return image, time_s


def open_source(
    spec: SourceSpec | str,
    *,
    fps: float | None = None,
    reconnect: int = DEFAULT_RECONNECTS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> VideoSource:
    """Open ``spec`` (or the ``--source`` text) and read its first frame.

    ``fps`` is the frame rate of a folder of frames (default 30; EPIC-KITCHENS-55 and -100 frames
    are 60 fps), also used for a video file that states none. ``reconnect`` is how many times a
    live source that stops sending is reopened; ``timeout_s`` bounds a URL's connect and reads.
    """
    if isinstance(spec, str):
        spec = parse_source(spec)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise SourceError(f"--fps must be a positive number of frames per second, got {fps}")
    if spec.kind is SourceKind.FOLDER:
        return FolderSource(spec, fps=fps)
    return CaptureSource(spec, fps=fps, reconnect=reconnect, timeout_s=timeout_s)
