"""The ``--events`` JSON Lines log: one line per prediction, then one summary line per stream.

Prediction line::

    {"type": "prediction", "stream": str, "frame_index": int, "time_s": float,
     "raw": {"label": str, "score": float}, "smoothed": {"label": str, "score": float},
     "scores": [float, ...], "latency_ms": float, "warmup": bool}

Server line (``--server`` only: the inference server was lost, or is back)::

    {"type": "server", "stream": str, "state": "lost" | "restored", "wall_time": str,
     "wall_s": float, "detail": str, "outages": int}

Summary line (the last line of its stream)::

    {"type": "summary", "stream": str, "frames": int, "predictions": int, "dropped_frames": int,
     "video_label": str, "video_score": float, "video_label_from": str, "invalid_predictions": int,
     "segments": [{"label": str, "start_s": float, "end_s": float, "score": float}], ...}

``video_label`` is the argmax of the mean of the raw score vectors of full clips; when a source is
shorter than the model's clip span there are none, and the warm-up clips stand in
(``video_label_from``: ``"full_clips"``, ``"warmup_clips"`` or ``"none"``). A score vector with NaN
or inf is written (non-finite values as null, ``"invalid": true``) and counted in
``invalid_predictions``, but enters neither ``video_label`` nor smoothing. ``segments`` are the runs
of the smoothed label over the presented frames; a run ends where the next begins (the last one a
frame interval after its last frame), and its score is the mean smoothed score over its frames.
Extra summary keys: ``latency_ms_p50``, ``latency_ms_p95``, ``inference_ms_mean`` and whatever
the caller passes to :meth:`EventLog.close`.

Several streams share one file: :class:`EventWriter` owns it and writes whole lines under a lock;
each stream has its own :class:`EventLog` (its presenter thread is the only user of it). Each line
is flushed as it is written, so a crash leaves only complete lines. Without a path the log writes
nothing but still builds the summary that is printed at exit.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from stream.errors import OutputError
from stream.prediction import NO_ACTION, Label, Prediction
from stream.sketch import LatencySketch

STDOUT = "-"  # --events -: the lines go to standard output, for a pipe
SEGMENTS_KEPT = 1000  # the summary's segments: the newest ones; each was written as it closed
SCORE_DECIMALS = 6
TIME_DECIMALS = 6  # microseconds: exact enough to tell frames of a 1000 fps source apart
MS_DECIMALS = 3
_SUMMARY_SCHEMA = frozenset(
    (
        "type",
        "stream",
        "frames",
        "predictions",
        "dropped_frames",
        "video_label",
        "video_score",
        "video_label_from",
        "invalid_predictions",
        "segments",
        "segments_total",
        "wall_time",
    )
)


def check_writable(path: Path | str) -> None:
    """Raise :class:`OutputError` unless a file can be created at ``path``.

    Called before the stream starts, so that a typo in an output path is reported at once rather
    than after minutes of video. Used for the events file and the recording alike.
    """
    if str(path) == STDOUT:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist; create it first")
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise OutputError(f"cannot write {path}: permission denied on {target}")


def wall_time(seconds: float | None = None) -> str:
    """ISO 8601 in UTC to the millisecond: ``2026-12-01T21:04:56.123Z``."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(value: float, decimals: int) -> float | None:
    """A JSON-safe rounded float: NaN and infinities (a broken model) become null."""
    value = float(value)
    return round(value, decimals) if math.isfinite(value) else None


def _label_json(label: Label) -> dict[str, Any]:
    return {"label": label.name, "score": _round(label.score, SCORE_DECIMALS)}


def _json_safe(value: Any) -> Any:
    """Extras as JSON: numpy scalars to Python, floats rounded, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return _round(value, SCORE_DECIMALS)
    return value


@dataclass
class _Run:
    """A run of one smoothed label over consecutive presented frames."""

    index: int
    name: str
    start_s: float
    last_s: float
    score_sum: float
    wall_start: float  # time.time() when its first frame was presented
    frames: int = 1

    def as_segment(self, end_s: float) -> dict[str, Any]:
        return {
            "label": self.name,
            "start_s": _round(self.start_s, TIME_DECIMALS),
            "end_s": _round(end_s, TIME_DECIMALS),
            "score": _round(self.score_sum / self.frames, SCORE_DECIMALS),
        }


class EventWriter:
    """The events file: whole JSON lines, flushed one by one, from any thread.

    ``--events -`` writes to standard output (for jq or a log shipper). :meth:`reopen` (SIGHUP,
    the logrotate convention) closes the file and opens the path anew between two lines, so no
    line is lost or split across a rotation.
    """

    def __init__(self, path: Path | None, file: IO[str] | None) -> None:
        self.path = path
        self._file = file
        self._lock = threading.Lock()
        self.lines = 0  # written, over every file this writer had
        self.reopened = 0
        # Called with every record, from the writing thread, file or not (--serve forwards them).
        self.listener: Callable[[dict[str, Any]], None] | None = None

    @property
    def to_stdout(self) -> bool:
        return self.path is not None and str(self.path) == STDOUT

    @classmethod
    def open(cls, path: Path | str | None) -> EventWriter:
        """A writer to ``path`` (replaced if it exists), standard output (``-``), or one that
        writes nothing (None)."""
        if path is None:
            return cls(None, None)
        if str(path) == STDOUT:
            return cls(Path(STDOUT), sys.stdout)
        path = Path(path)
        check_writable(path)
        return cls(path, cls._open_file(path, "w"))

    @staticmethod
    def _open_file(path: Path, mode: str) -> IO[str]:
        try:
            return path.open(mode, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write events file {path}: {exc.strerror or exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        if self.listener is not None:
            self.listener(record)
        line = json.dumps(record, allow_nan=False) + "\n"
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as exc:
                self._close_locked()
                raise OutputError(
                    f"cannot write events file {self.path}: {exc.strerror or exc}"
                ) from exc
            self.lines += 1

    def reopen(self) -> None:
        """Start a new file at the same path (after logrotate moved the old one away)."""
        with self._lock:
            if self._file is None or self.to_stdout:
                return
            self._close_locked()
            # Append: a rotation that copied and truncated the file keeps what is there.
            self._file = self._open_file(self.path, "a")
            self.reopened += 1

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        file, self._file = self._file, None
        if file is not None and file is not sys.stdout:
            try:
                file.close()
            except OSError as exc:
                raise OutputError(
                    f"cannot write events file {self.path}: {exc.strerror or exc}"
                ) from exc


class EventLog:
    """One stream's lines: predictions as they come, the summary line on :meth:`close`."""

    def __init__(
        self,
        writer: EventWriter,
        class_names: Sequence[str] = (),
        *,
        stream: str = "",
        owns_writer: bool = False,
    ) -> None:
        self.writer = writer
        self.stream = stream
        self._owns_writer = owns_writer
        # Names for video_label, whose class may never have been anyone's top-1; labels seen in
        # write_prediction fill in when the caller gave none.
        self._names: dict[int, str] = dict(enumerate(class_names))
        self._predictions = 0
        self._invalid = 0
        self._score_sum: np.ndarray | None = None  # full clips
        self._full = 0
        self._warmup_sum: np.ndarray | None = None  # warm-up clips: the fallback for short sources
        self._warmup = 0
        # Latency percentiles from a fixed-size sketch (within 0.5%): a run may last weeks, and
        # nothing kept per prediction or per segment may grow with it.
        self._latencies = LatencySketch()
        self._inference_sum = 0.0
        self._segments: deque[dict[str, Any]] = deque(maxlen=SEGMENTS_KEPT)
        self._segments_total = 0
        self._run: _Run | None = None
        self._last_time_s: float | None = None
        self._last_frame: int | None = None
        self._frame_interval_s = 0.0
        self._summary: dict[str, Any] | None = None

    check_writable = staticmethod(check_writable)

    @property
    def path(self) -> Path | None:
        return self.writer.path

    @classmethod
    def open(
        cls, path: Path | str | None, class_names: Sequence[str] = (), *, stream: str = ""
    ) -> EventLog:
        """A log with a file of its own at ``path`` (replaced if it exists), or one that only
        summarises (None). Pass the model's ``class_names`` so that ``video_label`` can always be
        named."""
        return cls(EventWriter.open(path), class_names, stream=stream, owns_writer=True)

    @property
    def closed(self) -> bool:
        return self._summary is not None

    def write_prediction(self, pred: Prediction, raw: Label, smoothed: Label) -> None:
        """Log one prediction with its raw top-1 and the smoothed label shown after it.

        Warm-up predictions and invalid ones (non-finite scores) are written like the others;
        only full, valid clips count towards ``video_label``.
        """
        if self.closed:
            raise RuntimeError("write_prediction after close: the summary is already written")
        scores = np.asarray(pred.scores, dtype=np.float64)
        valid = bool(np.isfinite(scores).all())
        self._predictions += 1
        if not valid:
            self._invalid += 1
        elif pred.warmup:
            self._warmup_sum = scores if self._warmup_sum is None else self._warmup_sum + scores
            self._warmup += 1
        else:
            self._score_sum = scores if self._score_sum is None else self._score_sum + scores
            self._full += 1
        for label in (raw, smoothed):
            if label.index >= 0:
                self._names.setdefault(label.index, label.name)
        if math.isfinite(pred.latency_ms) and math.isfinite(pred.inference_ms):
            self._latencies.add(pred.latency_ms)
            self._inference_sum += pred.inference_ms
        record = {
            "type": "prediction",
            "stream": self.stream,
            "frame_index": int(pred.frame_index),
            "time_s": _round(pred.time_s, TIME_DECIMALS),
            "wall_time": wall_time(),
            "raw": _label_json(raw),
            "smoothed": _label_json(smoothed),
            "scores": [_round(s, SCORE_DECIMALS) for s in scores],
            "latency_ms": _round(pred.latency_ms, MS_DECIMALS),
            "warmup": bool(pred.warmup),
        }
        if not valid:
            record["invalid"] = True
        self._write(record)

    def write_source(self, state: str, time_s: float | None, detail: str) -> None:
        """Log a change of the source's state (opened, lost, reconnecting, ...). Called from the
        capture, presenter or main thread: the writer is thread-safe and this touches none of the
        presenter's state."""
        if self.closed:
            return
        self._write(
            {
                "type": "source",
                "stream": self.stream,
                "state": state,
                "time_s": None if time_s is None else _round(time_s, TIME_DECIMALS),
                "wall_time": wall_time(),
                "detail": detail,
            }
        )

    def write_server(self, state: str, wall_s: float, detail: str, outages: int) -> None:
        """Log that the inference server was lost or is back. Called on the scheduler thread, at
        once: the writer is thread-safe and this touches none of the presenter's state."""
        if self.closed:
            return  # the stream has ended; the outage is the others' news
        self._write(
            {
                "type": "server",
                "stream": self.stream,
                "state": state,
                "wall_time": wall_time(),
                "wall_s": _round(wall_s, MS_DECIMALS),
                "detail": detail,
                "outages": int(outages),
            }
        )

    def note_frame(self, frame_index: int, time_s: float, smoothed: Label | None) -> None:
        """Record the label shown on a presented frame; None (no result yet) is in no segment.

        Frames must be noted in presentation order (indices may skip where a live source dropped).
        """
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame {frame_index} noted after frame {self._last_frame}")
        self._last_frame = frame_index
        if self._last_time_s is not None and time_s > self._last_time_s:
            self._frame_interval_s = time_s - self._last_time_s
        self._last_time_s = time_s
        run = self._run
        now = time.time()
        if run is not None and (smoothed is None or smoothed.index != run.index):
            # The run covers its frames up to the moment the next frame replaced it.
            self._close_segment(run, time_s, now)
            self._run = run = None
        if smoothed is None:
            return
        if run is None:
            self._run = _Run(smoothed.index, smoothed.name, time_s, time_s, smoothed.score, now)
        else:
            run.last_s = time_s
            run.score_sum += smoothed.score
            run.frames += 1

    def close(
        self, *, frames: int, dropped_frames: int, extra: dict[str, Any] | None = None
    ) -> dict:
        """Write the summary line, close the file and return the summary; later calls return it again."""
        if self._summary is not None:
            return self._summary
        if self._run is not None:
            self._close_segment(self._run, self._run.last_s + self._frame_interval_s, time.time())
            self._run = None
        if self._full:
            total, count, source = self._score_sum, self._full, "full_clips"
        elif self._warmup:
            # A source shorter than the clip span has only warm-up clips: a guess beats no answer.
            total, count, source = self._warmup_sum, self._warmup, "warmup_clips"
        else:
            total, count, source = None, 0, "none"
        if total is not None:
            mean = total / count
            best = int(np.argmax(mean))
            video_label, video_score = self._names.get(best, str(best)), float(mean[best])
        else:
            video_label, video_score = NO_ACTION, 0.0
        summary: dict[str, Any] = {
            "type": "summary",
            "stream": self.stream,
            "frames": int(frames),
            "predictions": self._predictions,
            "dropped_frames": int(dropped_frames),
            "video_label": video_label,
            "video_score": _round(video_score, SCORE_DECIMALS),
            "video_label_from": source,
            "invalid_predictions": self._invalid,
            "segments": list(self._segments),
            "segments_total": self._segments_total,
            **self._latency_stats(),
        }
        # Extras may refine the latency figures but never change the fixed schema.
        for key, value in _json_safe(extra or {}).items():
            if key not in _SUMMARY_SCHEMA:
                summary[key] = value
        summary["wall_time"] = wall_time()
        self._summary = summary
        try:
            self._write(summary)
        finally:
            if self._owns_writer:
                self.writer.close()
        return summary

    # -- internals ---------------------------------------------------------------------------------

    def _close_segment(self, run: _Run, end_s: float, wall_end: float) -> None:
        """A segment is written the moment it closes: a consumer never waits for the exit."""
        segment = run.as_segment(end_s)
        self._segments.append(segment)
        self._segments_total += 1
        self._write(
            {
                "type": "segment",
                "stream": self.stream,
                **segment,
                "wall_start": wall_time(run.wall_start),
                "wall_end": wall_time(wall_end),
                "wall_time": wall_time(wall_end),
            }
        )

    def _latency_stats(self) -> dict[str, float | None]:
        sketch = self._latencies
        if not sketch.count:
            return {"latency_ms_p50": None, "latency_ms_p95": None, "inference_ms_mean": None}
        return {
            "latency_ms_p50": _round(sketch.percentile(50), MS_DECIMALS),
            "latency_ms_p95": _round(sketch.percentile(95), MS_DECIMALS),
            "inference_ms_mean": _round(self._inference_sum / sketch.count, MS_DECIMALS),
        }

    def _write(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
