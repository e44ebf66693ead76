"""VideoRecorder: the annotated recording (``--record``), playable whatever ends the stream.

Every presented frame is written at the source's size. ``.mp4`` (and ``.m4v``, ``.mov``) and
``.mkv`` are H.264 (yuv420p, which browsers play) through PyAV's bundled libx264, and each frame is
shown at its source time: a live recording that dropped frames still spans the time it covered,
and its clock is the events' ``time_s`` (both start at the first frame).

The MP4 is fragmented (a fragment per keyframe, forced at most a second of source time apart, and
no encoder lookahead), so it needs no index at the end: a process killed outright leaves a file
that plays up to its last second. Matroska needs no index either. ``.avi`` stays Motion JPEG
through OpenCV at a constant rate (AVI has no per-frame times; every frame is a keyframe, which
also survives a kill). Where PyAV or its H.264 encoder cannot be had, the other types fall back to
OpenCV's MPEG-4 Part 2 (``mp4v``) at a constant rate, said once, as before PyAV: then a live
source's rate is measured over the first second of frames, which are held until then (cameras
report 30 fps and deliver 15 in the dark), and an MP4 is only playable once
:meth:`VideoRecorder.close` writes its index, which every exit path of the pipeline does.

A full disk is the one failure that could leave a recording unfinished, so the recorder watches
the free space and stops, closing the file properly, while there is still room: the recording up
to then stays playable, and an :class:`OutputError` says why it ended.
"""

from __future__ import annotations

import logging
import math
import shutil
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from stream.errors import OutputError

log = logging.getLogger(__name__)

# What each type is written as: H.264 through PyAV, or OpenCV's fourcc (.avi always; the others
# only where PyAV cannot be had).
CODECS = {".mp4": "h264", ".m4v": "h264", ".mov": "h264", ".mkv": "h264", ".avi": "MJPG"}
FALLBACK_FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
H264_ENCODER = "libx264"
# superfast: the presenter encodes in its own thread, so the cost per frame bounds its rate; make
# bench ("recording", two runs on 2 busy shared cores) measured 4.5-4.7 ms a frame at 640x480 and
# 10-19 ms at 1280x720 (mp4v: 2.7-3.5 and 6.6-11), half of ultrafast's bytes and within 15% of
# veryfast's, at two thirds of veryfast's time at 720p. zerolatency: no
# lookahead and no B-frames, so every frame leaves the encoder as it goes in, and a kill loses
# only the fragment being built.
H264_OPTIONS = {"preset": "superfast", "tune": "zerolatency", "crf": "23"}
# A fragment per keyframe, no index at the end: each finished fragment plays on its own.
MP4_FRAGMENTS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
KEYFRAME_EVERY_S = 1.0  # source time between forced keyframes: the most a kill can lose
TIME_BASES = {".mkv": Fraction(1, 1000)}  # Matroska counts milliseconds; MP4 90 kHz ticks
TIME_BASE = Fraction(1, 90000)
MEASURE_FRAMES = 30  # OpenCV writer, live sources: frames held to measure the rate (at most ...)
MEASURE_SECONDS = 1.0  # ... or this much source time
FALLBACK_FPS = 30.0
RESERVE_BYTES = 64 * 1024 * 1024  # free space kept for finishing the file and the events summary
SPACE_CHECK_EVERY = 16  # frames between free-space checks (a statvfs call)

_fallback_said = False  # the OpenCV fallback is announced once per process


def _load_pyav() -> tuple[ModuleType | None, str]:
    """PyAV, if it and its H.264 encoder can be had; else None and why not."""
    try:
        import av
    except ImportError as exc:
        return None, f"PyAV cannot be imported ({exc})"
    try:
        av.codec.Codec(H264_ENCODER, "w")
    except (av.FFmpegError, ValueError) as exc:
        return None, f"PyAV {av.__version__} has no {H264_ENCODER} encoder ({exc})"
    return av, ""


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


def writable_fps(fps: float) -> float:
    """``fps`` as close as MPEG-4 Part 2 can store it.

    OpenCV hands FFmpeg the rate as n / 10^k, exact to 0.001 fps, and the mpeg4 encoder refuses a
    time base whose n exceeds 65535: a camera measured at 136.987 fps, or a file stated at 1000/7,
    could not be recorded at all. Rates above 65.535 fps are rounded to 0.01 fps (to whole frames
    above 655.35 fps), which fits; slower rates, 23.976 and 59.94 among them, pass unchanged.
    """
    fps = float(fps)
    if fps > 655.35:
        return float(round(fps))
    if fps > 65.535:
        return round(fps, 2)
    return fps


class _H264File:
    """H.264 in a fragmented MP4 (or Matroska) through PyAV, each frame at its source time."""

    def __init__(
        self, av: ModuleType, path: Path, size: tuple[int, int], fps: float | None
    ) -> None:
        # yuv420p halves the chroma in both directions, so libx264 needs an even size: an odd
        # row or column is padded (a copy of the edge) rather than a picture scaled by a pixel.
        self._pad = (size[0] % 2, size[1] % 2)
        suffix = path.suffix.lower()
        self._av = av
        self._time_base = TIME_BASES.get(suffix, TIME_BASE)
        self._container = av.open(str(path), "w", options={} if suffix == ".mkv" else MP4_FRAGMENTS)
        try:
            # The rate is the header's nominal one and a hint to rate control; times are the pts.
            rate = Fraction(fps or FALLBACK_FPS).limit_denominator(1001)
            stream = self._container.add_stream(H264_ENCODER, rate=rate, options=H264_OPTIONS)
            stream.width, stream.height = size[0] + self._pad[0], size[1] + self._pad[1]
            stream.pix_fmt = "yuv420p"
            stream.time_base = stream.codec_context.time_base = self._time_base
            stream.codec_context.open()  # refuses a size or option here, not at the first frame
        except BaseException:
            self._container.close()
            raise
        self._stream = stream
        self._origin: float | None = None  # source time of the first frame: the recording's 0
        self._last_pts = -1
        self._last_key_s = -math.inf

    def write(self, frame: np.ndarray, time_s: float) -> None:
        if self._pad != (0, 0):
            frame = cv2.copyMakeBorder(
                frame, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_REPLICATE
            )
        if self._origin is None:
            self._origin = time_s
        # Source time, kept strictly increasing (a muxer refuses two frames at one time).
        pts = round((time_s - self._origin) / self._time_base) if math.isfinite(time_s) else -1
        pts = max(pts, self._last_pts + 1)
        video = self._av.VideoFrame.from_ndarray(frame, format="bgr24")  # a copy: frame is free
        video.pts, video.time_base = pts, self._time_base
        seconds = float(pts * self._time_base)
        if seconds - self._last_key_s >= KEYFRAME_EVERY_S:
            video.pict_type = self._av.video.frame.PictureType.I
            self._last_key_s = seconds
        self._container.mux(self._stream.encode(video))
        self._last_pts = pts

    def close(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))  # whatever the encoder still holds
        finally:
            self._container.close()


class _OpenCVFile:
    """OpenCV's writer: Motion JPEG AVI, or mp4v where PyAV cannot be had; a constant rate."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        fourcc = FALLBACK_FOURCCS[path.suffix.lower()]
        self._writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter_fourcc(*fourcc), writable_fps(fps), size
        )
        if not self._writer.isOpened():
            raise OutputError(
                f"--record {path}: OpenCV cannot write {fourcc} video of {size[0]}x{size[1]} here"
            )

    def write(self, frame: np.ndarray, time_s: float) -> bool:
        return self._writer.write(frame) is not False  # OpenCV 5 reports failures; 4.x says None

    def close(self) -> None:
        self._writer.release()


class VideoRecorder:
    """Writes frames to ``path``; opened by the first frame, finished by :meth:`close`.

    ``fps`` is the source's stated rate, None for a live source; H.264 takes each frame's time
    from ``time_s`` and uses ``fps`` only as the nominal rate, OpenCV writes at ``fps`` (measured
    from the frames' source times when None).
    """

    def __init__(self, path: str | Path, *, fps: float | None) -> None:
        self.path = check_record_path(path)
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else None
        self.frames_written = 0
        self._av: ModuleType | None = None
        if CODECS[self.path.suffix.lower()] == "h264":
            self._av, why = _load_pyav()
            if self._av is None:
                _say_fallback(why)
        # What a failing encoder or muxer raises (OpenCV's writer reports by its return value).
        self._errors = (self._av.FFmpegError, OSError) if self._av is not None else ()
        self._file: _H264File | _OpenCVFile | None = None
        self._size: tuple[int, int] | None = None  # (width, height)
        self._held: list[tuple[np.ndarray, float]] = []  # frames waiting for the measured rate
        self._closed = False
        self._warned_resize = False

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size

    @property
    def codec(self) -> str:
        """What the file is written as: ``h264``, or OpenCV's ``mp4v`` / ``MJPG``."""
        suffix = self.path.suffix.lower()
        return CODECS[suffix] if self._av is not None else FALLBACK_FOURCCS[suffix]

    def write(self, frame: np.ndarray, time_s: float) -> None:
        """Add ``frame`` (BGR; the caller may reuse it afterwards), shown at source ``time_s``."""
        if self._closed:
            raise RuntimeError("write after close")
        if self._size is None:
            self._size = (frame.shape[1], frame.shape[0])
        if self._file is None and self._av is None and self.fps is None:
            self._held.append((frame.copy(), time_s))
            span = time_s - self._held[0][1]
            if len(self._held) >= MEASURE_FRAMES or span >= MEASURE_SECONDS:
                self._start_measured()
            return
        self._put(frame, time_s)

    def _start_measured(self) -> None:
        held, self._held = self._held, []
        span = held[-1][1] - held[0][1] if held else 0.0
        self.fps = (len(held) - 1) / span if len(held) > 1 and span > 0 else FALLBACK_FPS
        log.info("recording at the measured %.2f fps", self.fps)
        for frame, time_s in held:
            self._put(frame, time_s)

    def _open(self) -> None:
        if self._av is None:
            self._file = _OpenCVFile(self.path, self._size, self.fps)
            return
        try:
            self._file = _H264File(self._av, self.path, self._size, self.fps)
        except self._errors as exc:
            raise OutputError(
                f"--record {self.path}: cannot write H.264 video of {self._size[0]}x"
                f"{self._size[1]} here: {exc}"
            ) from exc

    def _put(self, frame: np.ndarray, time_s: float) -> None:
        if self._file is None:
            self._open()
        if (frame.shape[1], frame.shape[0]) != self._size:
            # A source that changes size mid-stream: the recording keeps its first size.
            if not self._warned_resize:
                self._warned_resize = True
                log.warning(
                    "frame size changed to %dx%d; the recording keeps %dx%d",
                    frame.shape[1],
                    frame.shape[0],
                    *self._size,
                )
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        if self.frames_written % SPACE_CHECK_EVERY == 0:
            self._check_space()
        if self._av is None:
            if not self._file.write(frame, time_s):
                self._fail("the video encoder refused a frame")
        else:
            try:
                self._file.write(frame, time_s)
            except self._errors as exc:
                # Past the reserve (another writer filled the disk between checks): the fragment
                # being written is cut, the ones before it play.
                self._fail(
                    f"the video could not be written ({exc})",
                    kept="plays up to its last whole fragment, at most a second before frame "
                    f"{self.frames_written}",
                )
        self.frames_written += 1

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < RESERVE_BYTES:
            self._fail(f"the disk is full ({free // (1024 * 1024)} MiB left)")

    def _fail(self, why: str, kept: str | None = None) -> None:
        kept = kept or f"keeps the {self.frames_written} frames written so far"
        try:
            self.close()
        except OutputError as exc:  # expected after a failed write; the reason it stopped is news
            log.debug("%s", exc)
        raise OutputError(f"recording stopped: {why}; {self.path} {kept}")

    def close(self) -> int:
        """Finish the file (idempotent); returns the number of frames written."""
        if self._closed:
            return self.frames_written
        try:
            if self._file is None and self._held:
                self._start_measured()
        finally:
            self._closed = True
            file, self._file = self._file, None
            if file is not None:
                try:
                    file.close()
                except self._errors as exc:
                    raise OutputError(
                        f"--record {self.path}: the recording could not be finished: {exc}"
                    ) from exc
        return self.frames_written


def _say_fallback(why: str) -> None:
    global _fallback_said
    if not _fallback_said:
        _fallback_said = True
        log.warning(
            "%s: recordings are MPEG-4 Part 2 (mp4v) at a constant rate, which browsers do not "
            "play; install PyAV (pip install av) for H.264",
            why,
        )
