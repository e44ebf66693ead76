"""The overlay drawn on every presented frame: label box, top-k bars and a status line.

Everything is sized from the frame's short side, so the same layout is legible on a 320x240
webcam and on 1080p footage, and nothing is drawn within ``margin`` of the frame's edges. It runs
on every frame, so the geometry is computed once per frame size and text measurements are
cached; drawing is a handful of ``cv2`` calls on small regions (well under a millisecond at 1080p).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from stream.prediction import Label

FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_FONT = cv2.FONT_HERSHEY_DUPLEX
ELLIPSIS = "..."
WAITING = "waiting..."

# BGR. Okabe-Ito colours (distinguishable with colour blindness), bright enough on a dark panel.
PALETTE = (
    (0, 159, 230),  # orange
    (233, 180, 86),  # sky blue
    (115, 158, 0),  # bluish green
    (66, 228, 240),  # yellow
    (178, 114, 0),  # blue
    (0, 94, 213),  # vermillion
    (167, 121, 204),  # reddish purple
)
WHITE = (245, 245, 245)
MUTED = (150, 150, 150)  # stale results and "no action"
TRACK = (70, 70, 70)  # the empty part of a bar
LABEL_SHADE = 0.25  # how much of the frame shows through the label box
PANEL_SHADE = 0.45  # ... through the bars and the status line


@dataclass(frozen=True)
class OverlayState:
    """What the overlay shows on one frame; built by the presenter, safe to reuse across frames."""

    label: Label
    top_k: tuple[tuple[str, float], ...]
    capture_fps: float | None
    model_fps: float | None
    latency_ms: float | None
    stale: bool  # no result yet, or the latest is too old to be shown as current
    source_name: str = ""
    # Seconds of source still needed before the first full clip (None: warmed up). Until then the
    # model only sees clips padded with the first frame, whose answers are not shown.
    warmup_s: float | None = None
    notice: str | None = None  # shown instead of "waiting", e.g. "server lost"


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable colour for a class name, the same in the label box and its bar."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


@lru_cache(maxsize=4096)
def _text_size(text: str, font: int, scale: float, thickness: int) -> tuple[int, int, int]:
    """(width, height above baseline, depth below baseline) of ``text``."""
    (width, height), baseline = cv2.getTextSize(text, font, scale, thickness)
    return width, height, baseline


@lru_cache(maxsize=4096)
def fit_text(text: str, font: int, scale: float, thickness: int, max_width: int) -> str:
    """``text``, cut and ended with an ellipsis where needed so that it is at most ``max_width`` wide."""
    if _text_size(text, font, scale, thickness)[0] <= max_width:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with the ellipsis, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if _text_size(text[:mid].rstrip() + ELLIPSIS, font, scale, thickness)[0] <= max_width:
            low = mid
        else:
            high = mid - 1
    return text[:low].rstrip() + ELLIPSIS if low else ""


@dataclass(frozen=True)
class _Text:
    font: int
    scale: float
    thickness: int
    height: int  # cap height in pixels, measured
    depth: int  # below the baseline


def _text_style(font: int, scale: float, thickness: int) -> _Text:
    _, height, depth = _text_size("Ag", font, scale, thickness)
    return _Text(font, scale, thickness, height, depth)


@dataclass(frozen=True)
class Layout:
    """The overlay's geometry for one frame size (pixels)."""

    width: int
    height: int
    margin: int
    pad: int
    panel_width: int
    label: _Text
    bars: _Text
    status: _Text
    accent: int  # width of the class-colour strip in the label box
    label_height: int
    row_height: int
    name_width: int  # the class-name column of the bar chart
    percent_width: int


@lru_cache(maxsize=16)
def layout_for(height: int, width: int) -> Layout:
    """The geometry for a ``width`` x ``height`` frame; computed once per size."""
    unit = min(height, width) / 720  # 1.0 at 720p; text scales with the short side
    margin = max(4, round(14 * unit))
    pad = max(3, round(9 * unit))
    # Font scales have floors: below them Hershey glyphs stop being legible on small frames.
    label = _text_style(LABEL_FONT, max(0.5, 1.15 * unit), max(1, round(1.7 * unit)))
    bars = _text_style(FONT, max(0.4, 0.72 * unit), max(1, round(1.3 * unit)))
    status = _text_style(FONT, max(0.38, 0.62 * unit), max(1, round(1.2 * unit)))
    percent_width = _text_size("100%", bars.font, bars.scale, bars.thickness)[0]
    # Wide enough for ~24 label characters, never wider than the frame allows.
    char = _text_size("m", label.font, label.scale, label.thickness)[0]
    panel_width = min(width - 2 * margin, max(round(0.34 * width), 20 * char))
    inner = panel_width - 2 * pad
    return Layout(
        width=width,
        height=height,
        margin=margin,
        pad=pad,
        panel_width=panel_width,
        label=label,
        bars=bars,
        status=status,
        accent=max(3, round(7 * unit)),
        label_height=label.height + label.depth + 2 * pad,
        row_height=bars.height + bars.depth + max(3, round(8 * unit)),
        name_width=round(0.46 * inner),
        percent_width=percent_width,
    )


def _unit(score: float) -> float:
    """``score`` clamped to [0, 1]; NaN (a broken model) counts as 0 rather than crashing the view."""
    return min(max(score, 0.0), 1.0) if np.isfinite(score) else 0.0


def _percent(score: float) -> str:
    return f"{100 * _unit(score):.0f}%"


def _shade(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, keep: float) -> None:
    """Darken a rectangle, keeping ``keep`` of its brightness, so that text on it is readable."""
    roi = frame[y0:y1, x0:x1]
    if roi.size:
        frame[y0:y1, x0:x1] = cv2.convertScaleAbs(roi, alpha=keep)


def _put(frame: np.ndarray, text: str, x: int, y: int, style: _Text, colour) -> None:
    cv2.putText(frame, text, (x, y), style.font, style.scale, colour, style.thickness, cv2.LINE_AA)


def _draw_label(frame: np.ndarray, state: OverlayState, lay: Layout, top: int) -> int:
    """The label box; returns the y just below it."""
    x0, x1 = lay.margin, lay.margin + lay.panel_width
    y1 = top + lay.label_height
    _shade(frame, x0, top, x1, y1, LABEL_SHADE)
    label, style = state.label, lay.label
    active = label.is_action and not state.stale
    accent = class_colour(label.name) if active else MUTED
    cv2.rectangle(frame, (x0, top), (x0 + lay.accent - 1, y1 - 1), accent, cv2.FILLED)

    # Stale: the last label, greyed, marked as waiting; no label at all: just "waiting...".
    name, right = label.name, ""
    if state.warmup_s is not None and not label.is_action:
        name, right = "warming up", f"{state.warmup_s:.1f} s"
    elif state.stale:
        waiting = state.notice or WAITING
        name, right = (label.name, waiting) if label.is_action else (waiting, "")
    elif label.is_action:
        right = _percent(label.score)
    baseline = top + lay.pad + style.height
    right_width = _text_size(right, style.font, style.scale, style.thickness)[0] if right else 0
    if right:
        _put(frame, right, x1 - lay.pad - right_width, baseline, style, accent if active else MUTED)
    text_x = x0 + lay.accent + lay.pad
    room = x1 - lay.pad - right_width - (lay.pad if right else 0) - text_x
    name = fit_text(name, style.font, style.scale, style.thickness, max(0, room))
    _put(frame, name, text_x, baseline, style, WHITE if active else MUTED)
    return y1


def _draw_bars(frame: np.ndarray, state: OverlayState, lay: Layout, top: int, rows: int) -> None:
    """The top-k chart: name, a bar as long as the score, and the score in percent."""
    x0, x1 = lay.margin, lay.margin + lay.panel_width
    _shade(frame, x0, top, x1, top + rows * lay.row_height + lay.pad, PANEL_SHADE)
    style = lay.bars
    bar_x0 = x0 + lay.pad + lay.name_width + lay.pad
    bar_x1 = x1 - lay.pad - lay.percent_width - lay.pad
    bar_height = max(2, style.height)
    for row, (name, score) in enumerate(state.top_k[:rows]):
        y = top + lay.pad + row * lay.row_height
        baseline = y + style.height
        text_colour = MUTED if state.stale else WHITE
        shown = fit_text(name, style.font, style.scale, style.thickness, lay.name_width)
        _put(frame, shown, x0 + lay.pad, baseline, style, text_colour)
        if bar_x1 > bar_x0:
            cv2.rectangle(frame, (bar_x0, y), (bar_x1, y + bar_height - 1), TRACK, cv2.FILLED)
            filled = bar_x0 + round(_unit(score) * (bar_x1 - bar_x0))
            if filled > bar_x0:
                colour = MUTED if state.stale else class_colour(name)
                cv2.rectangle(frame, (bar_x0, y), (filled, y + bar_height - 1), colour, cv2.FILLED)
        percent = _percent(score)
        width = _text_size(percent, style.font, style.scale, style.thickness)[0]
        _put(frame, percent, x1 - lay.pad - width, baseline, style, text_colour)


def _number(value: float | None, digits: int) -> str:
    return "--" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def status_texts(state: OverlayState) -> tuple[str, ...]:
    """Candidate status lines, most detailed first; the overlay draws the first that fits."""
    capture, model = _number(state.capture_fps, 1), _number(state.model_fps, 1)
    latency = _number(state.latency_ms, 0)
    full = f"capture {capture} fps | model {model} fps | latency {latency} ms"
    short = f"{capture} fps | model {model}/s | {latency} ms"
    lines = (full, short)
    if state.source_name:
        lines = (f"{state.source_name} | {full}", full, short)
    return lines


def _draw_status(frame: np.ndarray, state: OverlayState, lay: Layout) -> int:
    """The status line in the bottom-left corner; returns the y of its top edge."""
    style = lay.status
    room = lay.width - 2 * lay.margin - 2 * lay.pad
    candidates = status_texts(state)
    text = next(
        (
            t
            for t in candidates
            if _text_size(t, style.font, style.scale, style.thickness)[0] <= room
        ),
        None,
    )
    if text is None:
        text = fit_text(candidates[-1], style.font, style.scale, style.thickness, room)
    width = _text_size(text, style.font, style.scale, style.thickness)[0]
    y1 = lay.height - lay.margin
    y0 = y1 - (style.height + style.depth + 2 * lay.pad)
    _shade(frame, lay.margin, y0, lay.margin + width + 2 * lay.pad, y1, PANEL_SHADE)
    _put(frame, text, lay.margin + lay.pad, y0 + lay.pad + style.height, style, WHITE)
    return y0


def draw_overlay(frame: np.ndarray, state: OverlayState) -> None:
    """Draw ``state`` in place on ``frame`` (H x W x 3, uint8, BGR, C-contiguous)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 frame, got {frame.shape} {frame.dtype}")
    lay = layout_for(frame.shape[0], frame.shape[1])
    if lay.panel_width <= 2 * lay.pad:
        return  # a frame this small has no room for anything legible
    status_top = _draw_status(frame, state, lay)
    below_label = _draw_label(frame, state, lay, lay.margin)
    # As many bars as fit between the label box and the status line.
    room = status_top - lay.pad - below_label - lay.pad
    rows = min(len(state.top_k), max(0, room // lay.row_height))
    if rows:
        _draw_bars(frame, state, lay, below_label, rows)
