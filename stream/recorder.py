"""VideoRecorder: the annotated recording (``--record``), playable whatever ends the stream.

Every presented frame is written at the source's size and frame rate. A live source states no
trustworthy rate (cameras report 30 and deliver 15 in the dark), so its rate is measured over the
first second of frames, which are held until then. ``.mp4`` (and ``.m4v``, ``.mov``, ``.mkv``) are
written as MPEG-4 Part 2 (``mp4v``), ``.avi`` as Motion JPEG: both ship with every OpenCV build.

An MP4 is only playable once its index is written by :meth:`VideoRecorder.close`, which every exit
path of the pipeline calls. A full disk is the one failure that could prevent it, so the recorder
watches the free space and stops, closing the file properly, while there is still room for the
index: the recording up to then stays playable, and an :class:`OutputError` says why it ended.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import cv2
import numpy as np

from stream.errors import OutputError

log = logging.getLogger(__name__)

CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
MEASURE_FRAMES = 30  # live sources: frames held to measure the frame rate (at most ...)
MEASURE_SECONDS = 1.0  # ... or this much source time
FALLBACK_FPS = 30.0
RESERVE_BYTES = 64 * 1024 * 1024  # free space kept for the MP4 index and the events summary
SPACE_CHECK_EVERY = 16  # frames between free-space checks (a statvfs call)


def check_record_path(path: str | Path) -> Path:
    """Raise :class:`OutputError` unless a recording can be written at ``path``; checked before
    the stream starts so that a typo costs nothing."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CODECS:
        raise OutputError(
            f"--record {path}: unknown video type '{suffix or 'none'}'; use "
            f"{', '.join(sorted(CODECS))}"
        )
    if path.is_dir():
        raise OutputError(f"--record {path} is a folder; give a file name such as out.mp4")
    if not path.parent.is_dir():
        raise OutputError(f"--record {path}: folder {path.parent} does not exist; create it first")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise OutputError(f"--record {path}: cannot write there: {exc.strerror or exc}") from exc
    if not existed:
        path.unlink(missing_ok=True)
    return path


class VideoRecorder:
    """Writes frames to ``path``; opened by the first frame, finished by :meth:`close`.

    ``fps`` None: measure the rate from the frames' source times (live sources).
    """

    def __init__(self, path: str | Path, *, fps: float | None) -> None:
        self.path = check_record_path(path)
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else None
        self.frames_written = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height)
        self._held: list[tuple[np.ndarray, float]] = []  # frames waiting for the measured rate
        self._closed = False
        self._warned_resize = False

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size

    def write(self, frame: np.ndarray, time_s: float) -> None:
        """Add ``frame`` (BGR; the caller may reuse it afterwards), shown at source ``time_s``."""
        if self._closed:
            raise RuntimeError("write after close")
        if self._size is None:
            self._size = (frame.shape[1], frame.shape[0])
        if self._writer is None and self.fps is None:
            self._held.append((frame.copy(), time_s))
            span = time_s - self._held[0][1]
            if len(self._held) >= MEASURE_FRAMES or span >= MEASURE_SECONDS:
                self._start_measured()
            return
        self._put(frame)

    def _start_measured(self) -> None:
        held, self._held = self._held, []
        span = held[-1][1] - held[0][1] if held else 0.0
        self.fps = (len(held) - 1) / span if len(held) > 1 and span > 0 else FALLBACK_FPS
        log.info("recording at the measured %.2f fps", self.fps)
        for frame, _ in held:
            self._put(frame)

    def _open(self) -> None:
        fourcc = cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self.path), fourcc, float(self.fps), self._size)
        if not writer.isOpened():
            raise OutputError(
                f"--record {self.path}: OpenCV cannot write {CODECS[self.path.suffix.lower()]} "
                f"video of {self._size[0]}x{self._size[1]} here"
            )
        self._writer = writer

    def _put(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self._open()
        if (frame.shape[1], frame.shape[0]) != self._size:
            # A source that changes size mid-stream: the recording keeps its first size.
            if not self._warned_resize:
                self._warned_resize = True
                log.warning(
                    "frame size changed to %dx%d; the recording keeps %dx%d",
                    frame.shape[1], frame.shape[0], *self._size,
                )  # fmt: skip
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        if self.frames_written % SPACE_CHECK_EVERY == 0:
            self._check_space()
        ok = self._writer.write(frame)
        if ok is False:  # OpenCV 5 reports failed writes; 4.x returns None
            self._fail("the video encoder refused a frame")
        self.frames_written += 1

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < RESERVE_BYTES:
            self._fail(f"the disk is full ({free // (1024 * 1024)} MiB left)")

    def _fail(self, why: str) -> None:
        frames = self.frames_written
        self.close()
        raise OutputError(
            f"recording stopped: {why}; {self.path} keeps the {frames} frames written so far"
        )

    def close(self) -> int:
        """Finish the file (idempotent); returns the number of frames written."""
        if self._closed:
            return self.frames_written
        try:
            if self._writer is None and self._held:
                self._start_measured()
        finally:
            self._closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.release()
        return self.frames_written
