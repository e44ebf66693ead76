"""CaptureThread: reads the source, stamps each frame, resizes it once and publishes it to the ring.

Three modes, chosen by the source (:class:`CaptureMode`):

* ``LOSSLESS`` (files and frame folders): every frame is decoded and published; when the ring is
  full the thread waits for the worker and the presenter (backpressure), so nothing is dropped and
  the run is deterministic however slow the model.
* ``LIVE`` (cameras, URLs): never waits for anyone. A frame that finds the presenter still busy
  with its display slot is dropped and counted; older frames are overwritten in the ring.
* ``PACED`` (``--realtime`` files): a file treated as a camera: frames are released at their
  source time, and frames that decoding could not deliver on time are dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum

import cv2
import numpy as np

from stream.errors import SourceError
from stream.preprocess import resize_and_crop
from stream.ring import FrameRing
from stream.source import VideoSource

log = logging.getLogger(__name__)


class CaptureMode(Enum):
    LOSSLESS = "lossless"
    LIVE = "live"
    PACED = "paced"

    @property
    def is_live(self) -> bool:
        return self is not CaptureMode.LOSSLESS


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Grayscale and BGRA frames as 3-channel BGR (a new array); BGR frames unchanged."""
    if image.dtype != np.uint8:
        raise SourceError(f"unsupported frame format: {image.dtype} pixels (expected 8-bit)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise SourceError(f"unsupported frame format: shape {image.shape} (expected H x W x 3)")


class CaptureThread(threading.Thread):
    """Owns the source: the only reader of it and the only writer of the ring."""

    def __init__(
        self,
        source: VideoSource,
        ring: FrameRing,
        image_size: int,
        stop: threading.Event,
        *,
        mode: CaptureMode,
        name: str = "",
    ) -> None:
        super().__init__(name=f"epic-capture-{name}" if name else "epic-capture", daemon=True)
        self.source = source
        self.ring = ring
        self.image_size = image_size
        self.stop_event = stop
        self.mode = mode
        self.frames = 0  # frames read from the source
        self.dropped = 0  # frames read but never published (live and paced only)
        self.error: BaseException | None = None
        self._first_size: tuple[int, ...] | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # Handed to the main thread, which re-raises it once the frames read before the
            # failure are presented and recorded: the ring is closed, not abandoned.
            self.error = exc
        finally:
            self.ring.close()
            self.source.close()

    def _loop(self) -> None:
        ring, stop = self.ring, self.stop_event
        paced = self.mode is CaptureMode.PACED
        interval = 1.0 / (self.source.fps or 30.0)
        origin: tuple[float, float] | None = None  # (wall, source time) of the first frame
        scratch: np.ndarray | None = None  # decode target for frames that will be dropped
        while not stop.is_set():
            seq = ring.reserve(stop)
            if seq is None and not self.mode.is_live:
                return  # stopped while waiting for room
            into = ring.display_slot(seq) if seq is not None else scratch
            got = self.source.read(into, stop)
            captured = time.monotonic()
            if got is None:
                return
            image, time_s = got
            index = self.frames
            self.frames += 1
            if seq is None:
                scratch = image
            if paced:  # a file played as a camera: each frame arrives at its source time
                if origin is None:
                    origin = (captured, time_s)
                due = origin[0] + (time_s - origin[1])
                if captured > due + interval:  # decoding fell behind the clock: like a camera
                    self.dropped += 1
                    continue  # a reserved slot stays reserved and takes the next frame
                if captured < due and stop.wait(due - captured):
                    return
                captured = time.monotonic()
            if seq is None:  # the presenter holds this display slot: drop, never wait
                self.dropped += 1
                continue
            image = to_bgr(image)
            self._note_size(image)
            resize_and_crop(image, self.image_size, out=ring.model_slot(seq))
            ring.publish(seq, image, index, time_s, captured)

    def _note_size(self, image: np.ndarray) -> None:
        if self._first_size is None:
            self._first_size = image.shape
        elif image.shape != self._first_size:
            log.warning(
                "%s: frame size changed from %dx%d to %dx%d at frame %d",
                self.source.name,
                self._first_size[1],
                self._first_size[0],
                image.shape[1],
                image.shape[0],
                self.frames - 1,
            )
            self._first_size = image.shape
