"""Outputs as sinks: what a stream's presenter hands each presented frame and prediction to.

Every output of a stream (the recording, the events log, the window's tile, the web view) is a
:class:`Sink` with one :meth:`Sink.close`, so that the presenter treats them alike and the
finalization closes each exactly once, whatever ended the stream. The presenter draws the overlay
only when some sink :attr:`~Sink.wants_image`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from stream.events import EventLog
from stream.prediction import Label, Prediction
from stream.recorder import VideoRecorder
from stream.ring import FrameInfo


@dataclass(frozen=True)
class StreamTotals:
    """What a stream's summary needs from its presenter at the end."""

    frames: int
    dropped_frames: int
    extra: dict[str, Any]


class Sink:
    """One output of one stream. The presenter thread calls everything but :meth:`close`'s
    fallback, which the main thread may call if the presenter could not."""

    @property
    def wants_image(self) -> bool:
        """Whether :meth:`frame` needs the annotated image now (else the overlay is not drawn)."""
        return False

    def prediction(self, prediction: Prediction, raw: Label, smoothed: Label) -> None:
        """A prediction, with its raw top-1 and the smoothed label shown after it."""

    def frame(self, image: np.ndarray, info: FrameInfo, smoothed: Label | None) -> None:
        """A presented frame (annotated when :attr:`wants_image`), with the label it shows."""

    def source(self, state: str, time_s: float | None, detail: str) -> None:
        """The source's state changed (``opened``, ``lost``, ``reconnecting``, ``reopened``,
        ``stalled``, ``resumed``, ``ended``). Called on any of the stream's threads or the main
        thread: a sink that overrides this must be thread-safe."""

    def server(self, lost: bool, wall_s: float, detail: str, outages: int) -> None:
        """The inference server was lost or is back (``--server``). Called on the scheduler
        thread: a sink that overrides this must be thread-safe."""

    def close(self, totals: StreamTotals) -> dict[str, Any] | None:
        """Finish the output; the events sink returns the stream's summary."""
        return None


class EventsSink(Sink):
    """The stream's lines of the ``--events`` file (and the summary that is printed at exit)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def prediction(self, prediction: Prediction, raw: Label, smoothed: Label) -> None:
        self.log.write_prediction(prediction, raw, smoothed)

    def frame(self, image: np.ndarray, info: FrameInfo, smoothed: Label | None) -> None:
        self.log.note_frame(info.index, info.time_s, smoothed)

    def source(self, state: str, time_s: float | None, detail: str) -> None:
        self.log.write_source(state, time_s, detail)

    def server(self, lost: bool, wall_s: float, detail: str, outages: int) -> None:
        self.log.write_server("lost" if lost else "restored", wall_s, detail, outages)

    def close(self, totals: StreamTotals) -> dict[str, Any]:
        return self.log.close(
            frames=totals.frames, dropped_frames=totals.dropped_frames, extra=totals.extra
        )


class RecorderSink(Sink):
    """The annotated recording (``--record``)."""

    def __init__(self, recorder: VideoRecorder) -> None:
        self.recorder = recorder

    @property
    def wants_image(self) -> bool:
        return True

    def frame(self, image: np.ndarray, info: FrameInfo, smoothed: Label | None) -> None:
        self.recorder.write(image, info.time_s)

    def close(self, totals: StreamTotals) -> None:
        self.recorder.close()


class TileSink(Sink):
    """The stream's tile in the window: the newest annotated frame, scaled, for the main thread.

    The presenter copies a frame only when the main thread has taken the previous one, so a
    window that refreshes slower than the stream costs one copy per refresh, not per frame.
    """

    def __init__(self, max_width: int) -> None:
        self.max_width = max_width
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        self._taken = True

    @property
    def wants_image(self) -> bool:
        return self._taken

    def frame(self, image: np.ndarray, info: FrameInfo, smoothed: Label | None) -> None:
        if not self._taken:
            return
        height, width = image.shape[:2]
        if width > self.max_width:
            size = (self.max_width, max(1, round(height * self.max_width / width)))
            tile = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        else:
            tile = image.copy()
        with self._lock:
            self._latest, self._taken = tile, False

    def take(self) -> np.ndarray | None:
        """The newest tile, or None when there is nothing new since the last take."""
        with self._lock:
            if self._taken:
                return None
            self._taken = True
            return self._latest
