"""Video sources: what ``--source`` names, opened and read one frame at a time with its source time.

``--source`` accepts a camera (``webcam``, ``webcam:N`` or a bare integer), a video file, a URL
(rtsp://, http://, https://: IP cameras and MJPEG streams), a folder of frame images (EPIC-KITCHENS
``frame_0000000001.jpg`` style, in sorted order) or a glob of them.

Each frame carries its *source time* in seconds, which is what the inference worker spaces a clip
by (its :class:`TimeBase`):

* video file: the container's timestamp of the frame (``CAP_PROP_POS_MSEC``), or index / fps when
  the container gives none; ``--fps`` applies only to a file that states no frame rate;
* folder of frames: index / ``--fps`` (default 30);
* URL that carries presentation times (RTSP/RTP, RTMP, HLS, HTTP video): the stream's own clock,
  mapped by :class:`StreamClock` onto one increasing timeline that continues across reconnects,
  wraps and resets, so a burst of buffered frames keeps its real spacing;
* camera, or URL without timestamps (multipart MJPEG): the monotonic clock since the first frame.

A source is opened eagerly: the first frame is read by :func:`open_source`, so a file that is not a
video, a camera that does not exist or a URL that refuses fail with a :class:`SourceError` before
the stream starts, never halfway through. A URL's password never leaves this module unmasked
(:func:`mask_credentials`): names, log lines and errors all carry ``user:***@``.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import struct
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
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
DEFAULT_STALL_S = 5.0  # a live source without a frame this long is reported stalled
DEFAULT_RECONNECTS = 3
# A frame whose presentation time runs this much further ahead of its arrival than the frame
# before it is a reset of the stream's clock, not a burst (bursts of buffered video are a few s).
PTS_JUMP_S = 5.0
# The least step of the timeline, for a frame that repeats its predecessor's timestamp.
MIN_STEP_S = 1e-6
# OpenCV reports FFmpeg's AV_NOPTS_VALUE (-2**63) as the PTS of a frame that has none.
_NO_PTS_BELOW = -(2.0**62)
CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_SCHEMES = ("rtsp", "rtsps")
# Query parameters that carry secrets in camera URLs (?user=admin&password=...).
_SECRET_PARAMS = re.compile(r"pass|pwd|secret|token|key|auth|sig", re.IGNORECASE)
MASK = "***"
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


class TimeBase(Enum):
    """Where a source's frame times come from (docs/stream.md has the table for every source)."""

    PRESENTATION = "presentation"  # the stream's or container's own timestamps
    FRAME_RATE = "frame rate"  # index / fps: frame folders
    ARRIVAL = "arrival"  # the monotonic clock when the frame was read: cameras, MJPEG


class RtspTransport(Enum):
    """How RTP reaches us from an rtsp:// URL. TCP is the default: over UDP a lost packet smears
    the rest of its frame, and firewalls often drop UDP altogether."""

    TCP = "tcp"
    UDP = "udp"


def mask_credentials(text: str) -> str:
    """``text`` with a URL's password (``user:pass@``) and secret query values made ``***``.

    Anything that is not a URL comes back unchanged. Every name, log line and error that shows a
    URL goes through here, so a camera's password never reaches a terminal or an events file.
    """
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # e.g. an unbalanced [ in the host: mask everything after the scheme
        return f"{text.split('://', 1)[0]}://{MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMS.search(key) for key, _ in pairs):
            query = "&".join(
                f"{key}={MASK if _SECRET_PARAMS.search(key) else value}" for key, value in pairs
            )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


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
            return mask_credentials(str(self.target))
        return Path(str(self.target)).name or str(self.target)


def _natural_key(path: str) -> list:
    # frame_2.jpg before frame_10.jpg even without zero padding; EPIC pads, others may not.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _frame_files(paths) -> tuple[str, ...]:
    files = [
        str(p) for p in paths if Path(p).suffix.lower() in FRAME_SUFFIXES and Path(p).is_file()
    ]
    return tuple(sorted(files, key=_natural_key))


def parse_source(text: str) -> SourceSpec:
    """Turn ``--source`` into a :class:`SourceSpec`; raise :class:`SourceError` when it names nothing."""
    text = str(text).strip()
    if not text:
        raise SourceError(
            "--source is empty; give a video file, a folder of frames, a URL or webcam"
        )
    lowered = text.lower()
    if lowered == "webcam":
        return SourceSpec(SourceKind.CAMERA, 0)
    if lowered.startswith("webcam:"):
        index = text.split(":", 1)[1]
        if not index.isdigit():
            raise SourceError(
                f"--source {text}: expected webcam:N with N a camera number, e.g. webcam:1"
            )
        return SourceSpec(SourceKind.CAMERA, int(index))
    if text.isdigit():
        return SourceSpec(SourceKind.CAMERA, int(text))
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(
                f"--source {mask_credentials(text)}: unsupported URL scheme '{scheme}://' "
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


class SourceState(Enum):
    """What a stream's source is doing, as the events' ``source`` lines and the views report it."""

    OPENED = "opened"  # the first frame was read
    LOST = "lost"  # it stopped sending (or the connection dropped)
    RECONNECTING = "reconnecting"  # an attempt to reopen it is under way
    REOPENED = "reopened"  # frames flow again after a loss
    STALLED = "stalled"  # no frame for --stall-s, the connection still open
    RESUMED = "resumed"  # frames flow again after a stall
    ENDED = "ended"  # no more frames will come

    @property
    def healthy(self) -> bool:
        return self in (SourceState.OPENED, SourceState.REOPENED, SourceState.RESUMED)


class VideoSource(ABC):
    """An opened source. One thread (the capture thread) reads it; :meth:`close` may come from any."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.frames_read = 0
        # Told of losses and reconnects as they happen (on the capture thread); the stream's
        # channel sets it to write them as events and show them.
        self.on_state: Callable[[SourceState, str], None] | None = None
        # Set when the source ended for a reason the user should hear about (a truncated file,
        # a stream that dropped for good); None for a normal end.
        self.end_note: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def _report(self, state: SourceState, detail: str) -> None:
        if self.on_state is not None:
            self.on_state(state, detail)

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
    def time_base(self) -> TimeBase:
        """Where the frame times come from."""
        return TimeBase.ARRIVAL if self.is_live else TimeBase.PRESENTATION

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


def missing_mp4_index(path: str) -> str | None:
    """Why an MP4/MOV that FFmpeg cannot open is unreadable, when the cause is its missing index.

    An MP4 needs its index (the ``moov`` box) to find any frame. Most writers, cameras and OpenCV
    among them, put it after the frames, so a file cut off (an interrupted copy or download, a
    recording whose writer died) has none, and not even its first frames can be decoded. Returns
    None for anything else (not an MP4, or an index that is there).
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset + 8 <= size:
                handle.seek(offset)
                header = handle.read(16)
                box_size, kind = struct.unpack(">I4s", header[:8])
                if box_size == 1 and len(header) == 16:
                    box_size = struct.unpack(">Q", header[8:])[0]
                elif box_size == 0:  # the last box runs to the end of the file
                    box_size = size - offset
                if (offset == 0 and kind != b"ftyp") or box_size < 8 or kind == b"moov":
                    return None
                offset += box_size
    except OSError:
        return None
    if offset == 0:
        return None
    if offset > size:
        return (
            f"{path} is truncated and its MP4 index (the moov box, which this file keeps after the "
            "frames) is missing, so no frame can be located; copy the whole file again (an MP4 "
            "remuxed with `ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4` keeps its index "
            "first, and a cut-off copy of it still plays up to the cut)"
        )
    return (
        f"{path} has no MP4 index (moov box): its writer never finalized it, so no frame can be "
        "located; a tool such as untrunc can rebuild the index from a healthy video of the same camera"
    )


class StreamClock:
    """One increasing timeline for a live stream, from its presentation times where it has them.

    A camera or server sends frames in bursts (a preroll of a second or more, frames held back by
    the network) and then in real time, so arrival times misplace frames; the stream's own
    timestamps do not. Each frame's presentation time (pts) advances the timeline by its step
    from the previous frame's pts. Where that step cannot be trusted, the timeline advances by the
    arrival gap instead (at least one frame interval after a reset, so that frames still flowing
    stay a frame apart) and follows the new pts from there:

    * no pts at all (multipart MJPEG): arrival time, frame by frame;
    * a pts that does not move forward: a reconnect (a new session starts its clock again), a
      wrap of the timestamp counter, or a duplicated frame;
    * a pts that jumps ahead by more than :data:`PTS_JUMP_S` beyond the arrival gap: a reset of
      the sender's clock.

    The first frame is at 0. The result always increases, which the ring's clip gathering needs.
    """

    def __init__(self) -> None:
        self._time_s: float | None = None  # the previous frame's timeline time
        self._arrival_s = 0.0  # ... and its arrival (time.monotonic())
        self._pts_s: float | None = None  # ... and its pts
        self._offset_s = 0.0  # timeline time - pts, while the pts are continuous
        self._step_s = 0.0  # the latest trusted pts step: one frame interval

    def stamp(self, pts_s: float | None, arrival_s: float) -> float:
        """The timeline time of a frame with presentation time ``pts_s`` (None: it has none) that
        arrived at ``arrival_s``."""
        if pts_s is not None and not math.isfinite(pts_s):
            pts_s = None
        if self._time_s is None:
            time_s = 0.0
        else:
            gap = max(0.0, arrival_s - self._arrival_s)
            step = None if pts_s is None or self._pts_s is None else pts_s - self._pts_s
            if step is not None and 0.0 < step <= gap + PTS_JUMP_S:
                time_s = pts_s + self._offset_s
                self._step_s = step
            elif step is not None and step != 0.0:  # went back or leapt ahead: a new clock
                time_s = self._time_s + max(gap, self._step_s, MIN_STEP_S)
            else:  # no pts, or the same pts again: only arrival says how much time passed
                time_s = self._time_s + max(gap, MIN_STEP_S)
        if pts_s is not None:
            self._offset_s = time_s - pts_s
        self._time_s, self._arrival_s, self._pts_s = time_s, arrival_s, pts_s
        return time_s


_capture_options_lock = threading.Lock()


def _capture_options(transport: RtspTransport) -> str:
    """The FFmpeg options for an rtsp:// open: the user's own ``OPENCV_FFMPEG_CAPTURE_OPTIONS``
    (``key;value|key;value``) with ``rtsp_transport`` set to ``transport``."""
    given = os.environ.get(CAPTURE_OPTIONS_ENV, "")
    pairs = [item for item in given.split("|") if item and not item.startswith("rtsp_transport;")]
    return "|".join([*pairs, f"rtsp_transport;{transport.value}"])


class CaptureSource(VideoSource):
    """A file, camera or URL read through ``cv2.VideoCapture``."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        fps: float | None = None,
        reconnect: int = DEFAULT_RECONNECTS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: RtspTransport = RtspTransport.TCP,
    ) -> None:
        super().__init__(spec)
        self._reconnect = max(0, int(reconnect))
        self._timeout_ms = int(timeout_s * 1000)
        self._transport = transport
        self._lock = threading.Lock()
        self._close_requested = False
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(self._open_failure())
        stated = self._cap.get(cv2.CAP_PROP_FPS)
        stated = stated if math.isfinite(stated) and 0 < stated < 1000 else None
        self._fps = self._frame_rate(fps, stated)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._count = int(count) if spec.kind is SourceKind.FILE and 0 < count < 1e9 else None
        self._last_time_s = -math.inf
        self._clock = StreamClock()
        first = self._grab_first()
        self._pending: np.ndarray | None = first
        self._pending_arrival_s = time.monotonic()
        self._pending_pts_s = self._presentation_s()
        if spec.kind is SourceKind.FILE or self._pending_pts_s is not None:
            self._time_base = TimeBase.PRESENTATION
        else:
            self._time_base = TimeBase.ARRIVAL
        height, width = first.shape[:2]
        self._size = (width, height)

    # -- opening ---------------------------------------------------------------------------------

    def _frame_rate(self, given: float | None, stated: float | None) -> float | None:
        """The nominal rate: what the source states; ``--fps`` only for a file that states none.

        A file's frames are timed by its own timestamps, so a different ``--fps`` could only make
        its predictions, recording and console disagree with its clock; it is ignored, once, aloud.
        """
        if self.spec.kind is SourceKind.FILE:
            differs = given is not None and not math.isclose(given, stated or given, rel_tol=1e-3)
            if differs:
                log.warning(
                    "--fps %g ignored: %s states %g fps, and its own timestamps time its frames "
                    "(--fps is for frame folders and files that state no rate)",
                    given,
                    self.name,
                    stated,
                )
            return stated or given or DEFAULT_FOLDER_FPS
        if given is not None:
            log.warning(
                "--fps %g ignored: %s is live and timed by its own clock "
                "(--fps is for frame folders and files that state no rate)",
                given,
                self.name,
            )
        return stated

    def _open(self) -> cv2.VideoCapture | None:
        kind, target = self.spec.kind, self.spec.target
        if kind is SourceKind.URL:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                self._timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                self._timeout_ms,
            ]
            if str(target).split("://", 1)[0].lower() in RTSP_SCHEMES:
                cap = self._open_rtsp(str(target), params)
            else:
                cap = cv2.VideoCapture(str(target), cv2.CAP_FFMPEG, params)
        elif kind is SourceKind.CAMERA:
            cap = cv2.VideoCapture(int(target))
        else:
            cap = cv2.VideoCapture(str(target))
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _open_rtsp(self, url: str, params: list[int]) -> cv2.VideoCapture:
        # OpenCV's FFmpeg backend takes demuxer options only from this variable, read during the
        # open; it replaces OpenCV's default (rtsp_flags=prefer_tcp). The timeouts above are
        # OpenCV's own interrupt callback, so they apply whatever the transport. The lock keeps
        # two streams opening at once from seeing each other's transport.
        with _capture_options_lock:
            before = os.environ.get(CAPTURE_OPTIONS_ENV)
            os.environ[CAPTURE_OPTIONS_ENV] = _capture_options(self._transport)
            try:
                return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
            finally:
                if before is None:
                    del os.environ[CAPTURE_OPTIONS_ENV]
                else:
                    os.environ[CAPTURE_OPTIONS_ENV] = before

    def _open_failure(self) -> str:
        kind, target = self.spec.kind, self.spec.target
        if kind is SourceKind.CAMERA:
            return (
                f"camera {target} cannot be opened: it does not exist or another program is using "
                "it (try webcam:N with another N)"
            )
        if kind is SourceKind.URL:
            return (
                f"cannot connect to {self.name} (refused, unreachable or no answer within "
                f"{self._timeout_ms / 1000:g} s); check the address and that the camera is streaming"
            )
        return missing_mp4_index(str(target)) or (
            f"{target} is not a video that can be read (unknown format, not a video, or corrupt)"
        )

    def _grab_first(self) -> np.ndarray:
        ok, image = self._cap.read()
        if ok and image is not None:
            return image
        self._cap.release()
        if self.spec.kind is SourceKind.FILE:
            raise SourceError(
                f"{self.spec.target}: no frames could be decoded (empty or corrupt video)"
            )
        raise SourceError(f"{self.name} opened but sent no frames")

    # -- reading ---------------------------------------------------------------------------------

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def frame_count(self) -> int | None:
        return self._count

    @property
    def time_base(self) -> TimeBase:
        """Presentation time; arrival time for cameras and for streams whose first frame carried
        no timestamp."""
        return self._time_base

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._size

    def read(self, into: np.ndarray | None = None, stop: threading.Event | None = None):
        if self._pending is not None:
            image, self._pending = self._pending, None
            arrival_s, pts_s = self._pending_arrival_s, self._pending_pts_s
        else:
            image = self._read_next(into, stop)
            if image is None:
                return None
            arrival_s, pts_s = time.monotonic(), self._presentation_s()
        time_s = self._stamp(arrival_s, pts_s)
        self.frames_read += 1
        return image, time_s

    def _read_next(
        self, into: np.ndarray | None, stop: threading.Event | None
    ) -> np.ndarray | None:
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
        self._report(SourceState.LOST, "stopped sending frames")
        for attempt in range(1, self._reconnect + 1):
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1))
            log.warning(
                "%s stopped sending frames; reconnecting in %.1f s (%d/%d)",
                self.name,
                delay,
                attempt,
                self._reconnect,
            )
            self._report(
                SourceState.RECONNECTING, f"attempt {attempt}/{self._reconnect} in {delay:g} s"
            )
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
                    self._report(SourceState.REOPENED, f"after {attempt} attempt(s)")
                    return True
        self.end_note = (
            f"{self.name} stopped sending frames and {self._reconnect} reconnect attempt(s) failed"
            if self._reconnect
            else f"{self.name} stopped sending frames (pass --reconnect N to retry)"
        )
        with self._lock:
            self._cap = None
        return False

    def _presentation_s(self) -> float | None:
        """A URL's current frame's presentation time in seconds, None when it has none (and for
        cameras, which are timed by arrival)."""
        if self.spec.kind is not SourceKind.URL:
            return None
        with self._lock:
            if self._cap is None:
                return None
            # POS_MSEC alone cannot tell: for a stream without timestamps (multipart MJPEG)
            # FFmpeg invents them at a made-up 25 fps. The frame's raw PTS says whether it had one.
            if not self._cap.get(cv2.CAP_PROP_PTS) > _NO_PTS_BELOW:
                return None
            return self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    def _stamp(self, arrival_s: float, pts_s: float | None) -> float:
        if self.is_live:
            return self._clock.stamp(pts_s, arrival_s)
        # A file: its own timestamps when they move forward, else index / fps, so that source
        # time is always increasing (the worker's clip spacing relies on it).
        with self._lock:
            pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self._cap is not None else -1.0
        time_s = pos_ms / 1000.0
        if not (math.isfinite(time_s) and time_s >= 0 and time_s > self._last_time_s):
            time_s = 0.0 if self._last_time_s == -math.inf else self._last_time_s + 1.0 / self._fps
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
    def time_base(self) -> TimeBase:
        return TimeBase.FRAME_RATE

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
    transport: RtspTransport = RtspTransport.TCP,
) -> VideoSource:
    """Open ``spec`` (or the ``--source`` text) and read its first frame.

    ``fps`` is the frame rate of a folder of frames (default 30; EPIC-KITCHENS-55 and -100 frames
    are 60 fps), also used for a video file that states none (and ignored, with a warning, for a
    file that states another rate, and for live sources). ``reconnect`` is how many times a live
    source that stops sending is reopened; ``timeout_s`` bounds a URL's connect and each read, on
    the first open and on every reconnect. ``transport`` carries an rtsp:// URL's video.
    """
    if isinstance(spec, str):
        spec = parse_source(spec)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise SourceError(f"--fps must be a positive number of frames per second, got {fps}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise SourceError(f"--timeout must be a positive number of seconds, got {timeout_s}")
    if spec.kind is SourceKind.FOLDER:
        return FolderSource(spec, fps=fps)
    return CaptureSource(
        spec, fps=fps, reconnect=reconnect, timeout_s=timeout_s, transport=RtspTransport(transport)
    )
