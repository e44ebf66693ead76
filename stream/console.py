"""The terminal view of a running stream, and the summary table printed at exit.

On a terminal, a rich ``Live`` panel shows the source, model, execution provider, rates, latency,
drops and the current label with its top-k, plus a progress bar with ETA for files. When stdout
is not a terminal (a log file, CI), it prints one plain line every couple of seconds instead,
with no control codes. With several streams, :class:`StreamsConsole` shows one row per stream
(or prints one line per stream).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.bar import Bar
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from stream.prediction import Label

SEGMENTS_SHOWN = 20  # the rest are in the events file; a terminal full of rows helps no one


@dataclass(frozen=True)
class StreamStats:
    """The pipeline's running figures, as the presenter sees them."""

    frames: int  # presented so far
    predictions: int
    dropped_frames: int
    capture_fps: float | None
    model_fps: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    position_s: float | None  # source time of the newest presented frame
    notice: str | None = None  # e.g. "server lost": predictions are paused


def _num(value: float | None, unit: str, digits: int = 1) -> str:
    return "--" if value is None else f"{value:.{digits}f} {unit}".rstrip()


def _label_text(label: Label) -> str:
    return f"{label.name} {label.score:.2f}" if label.is_action else label.name


class LiveConsole:
    """The live terminal view; :meth:`update` is cheap enough to call on every frame.

    On a terminal, rich redraws the latest figures ``refresh_per_second`` times from its own
    thread; otherwise :meth:`update` prints a line at most every ``log_interval_s`` seconds.
    """

    def __init__(
        self,
        source: str,
        model: str,
        provider: str,
        total_frames: int | None,
        class_names: Sequence[str],
        *,
        console: Console | None = None,
        refresh_per_second: float = 4.0,
        log_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console()
        self.source, self.model, self.provider = source, model, provider
        self.total_frames = total_frames if total_frames and total_frames > 0 else None
        self.num_classes = len(class_names)
        self.interactive = self.console.is_terminal and not self.console.is_dumb_terminal
        self._refresh_per_second = refresh_per_second
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._last_log: float | None = None
        # The latest values, replaced as a whole so rich's refresh thread never sees a mix.
        self._latest: tuple[StreamStats, Label, tuple[tuple[str, float], ...]] | None = None
        self._live: Live | None = None
        self._progress: Progress | None = None
        self._task = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LiveConsole:
        if self._started:
            return self
        self._started = True
        if self.interactive:
            if self.total_frames is not None:
                self._progress = Progress(
                    TextColumn("[progress.description]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TaskProgressColumn(),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    console=self.console,
                    auto_refresh=False,  # the Live below refreshes it
                )
                self._task = self._progress.add_task("frames", total=self.total_frames)
            self._live = Live(
                console=self.console,
                refresh_per_second=self._refresh_per_second,
                get_renderable=self._render,
                transient=False,
            )
            self._live.start()
        else:
            kind = f"{self.total_frames} frames" if self.total_frames else "live"
            self._print(
                f"source {self.source} ({kind}) | model {self.model} ({self.num_classes} classes) "
                f"| provider {self.provider}"
            )
        return self

    def stop(self) -> None:
        """Leave the final view on screen (or print a last line); safe to call twice."""
        if not self._started:
            return
        self._started = False
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._latest is not None:
            self._print(self._line(*self._latest))

    def __enter__(self) -> LiveConsole:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def view_for(self, name: str) -> LiveConsole:
        """The object a stream's presenter updates (the whole view: there is one stream)."""
        return self

    # -- updates -----------------------------------------------------------------------------------

    def update(
        self, stats: StreamStats, label: Label, top_k: Sequence[tuple[str, float]] = ()
    ) -> None:
        """Show the latest figures; the presenter may call this on every frame."""
        self._latest = (stats, label, tuple(top_k))
        if self._progress is not None:
            self._progress.update(self._task, completed=min(stats.frames, self.total_frames or 0))
        if not self.interactive and self._started:
            now = self._clock()
            if self._last_log is None or now - self._last_log >= self._log_interval_s:
                self._last_log = now
                self._print(self._line(stats, label, top_k))

    # -- rendering ---------------------------------------------------------------------------------

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _line(self, stats: StreamStats, label: Label, top_k: Sequence[tuple[str, float]]) -> str:
        """One plain log line, e.g. ``frame 370/900 (41%) 12.3 s | cut onion 0.87 | ...``."""
        where = f"frame {stats.frames}"
        if self.total_frames:
            where += f"/{self.total_frames} ({100 * stats.frames / self.total_frames:.0f}%)"
        if stats.position_s is not None:
            where += f" {stats.position_s:.1f} s"
        return " | ".join(
            (
                where,
                _label_text(label),
                f"capture {_num(stats.capture_fps, 'fps')}",
                f"model {_num(stats.model_fps, 'fps')}",
                f"latency p50 {_num(stats.latency_ms_p50, 'ms', 0)} p95 {_num(stats.latency_ms_p95, 'ms', 0)}",
                f"dropped {stats.dropped_frames}",
                *((stats.notice,) if stats.notice else ()),
            )
        )

    def _render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column()
        grid.add_row("source", self.source)
        grid.add_row("model", f"{self.model} ({self.num_classes} classes)")
        grid.add_row("provider", self.provider)
        if self._latest is not None:
            stats, label, top_k = self._latest
            position = "--" if stats.position_s is None else f"{stats.position_s:.1f} s"
            grid.add_row("position", f"{position}  (frame {stats.frames})")
            grid.add_row(
                "rates",
                f"capture {_num(stats.capture_fps, 'fps')}   model {_num(stats.model_fps, 'fps')}",
            )
            grid.add_row(
                "latency",
                f"p50 {_num(stats.latency_ms_p50, 'ms', 0)}   p95 {_num(stats.latency_ms_p95, 'ms', 0)}",
            )
            grid.add_row("dropped", f"{stats.dropped_frames} frames")
            if stats.notice:
                grid.add_row("status", Text(stats.notice, style="bold red"))
            style = "bold green" if label.is_action else "dim"
            grid.add_row("label", Text(_label_text(label), style=style))
            if top_k:
                grid.add_row("top-k", self._top_k_table(top_k))
        else:
            grid.add_row("status", Text("starting...", style="dim"))
        panel = Panel(
            grid, title="epic-stream", title_align="left", border_style="blue", expand=False
        )
        return panel if self._progress is None else Group(panel, self._progress)

    @staticmethod
    def _top_k_table(top_k: Sequence[tuple[str, float]]) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, max_width=32, overflow="ellipsis")
        table.add_column(width=20)
        table.add_column(justify="right")
        for name, score in top_k:
            table.add_row(
                name, Bar(1.0, 0.0, max(0.0, min(score, 1.0)), color="green"), f"{score:.2f}"
            )
        return table


class _StreamRow:
    """One stream's row of a :class:`StreamsConsole`; its presenter thread calls :meth:`update`."""

    def __init__(self, owner: StreamsConsole, name: str) -> None:
        self._owner = owner
        self.name = name
        self.latest: tuple[StreamStats, Label] | None = None
        self._last_log: float | None = None

    def update(
        self, stats: StreamStats, label: Label, top_k: Sequence[tuple[str, float]] = ()
    ) -> None:
        self.latest = (stats, label)
        owner = self._owner
        if not owner.interactive and owner.started:
            now = owner.clock()
            if self._last_log is None or now - self._last_log >= owner.log_interval_s:
                self._last_log = now
                owner.print_line(f"{self.name}: {owner.line(stats, label)}")


class StreamsConsole:
    """The live terminal view of several streams: one row each, the same figures as
    :class:`LiveConsole` gives one stream."""

    def __init__(
        self,
        names: Sequence[str],
        model: str,
        provider: str,
        *,
        console: Console | None = None,
        refresh_per_second: float = 4.0,
        log_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console()
        self.model, self.provider = model, provider
        self.interactive = self.console.is_terminal and not self.console.is_dumb_terminal
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.rows = {name: _StreamRow(self, name) for name in names}
        self._refresh_per_second = refresh_per_second
        self._live: Live | None = None
        self._print_lock = threading.Lock()  # several presenter threads print lines
        self.started = False

    def view_for(self, name: str) -> _StreamRow:
        return self.rows[name]

    def start(self) -> StreamsConsole:
        if self.started:
            return self
        self.started = True
        if self.interactive:
            self._live = Live(
                console=self.console,
                refresh_per_second=self._refresh_per_second,
                get_renderable=self._render,
                transient=False,
            )
            self._live.start()
        else:
            self.print_line(
                f"{len(self.rows)} streams | model {self.model} | provider {self.provider}"
            )
        return self

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        if self._live is not None:
            self._live.stop()
            self._live = None
        else:
            for row in self.rows.values():
                if row.latest is not None:
                    self.print_line(f"{row.name}: {self.line(*row.latest)}")

    def print_line(self, line: str) -> None:
        with self._print_lock:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    @staticmethod
    def line(stats: StreamStats, label: Label) -> str:
        where = f"frame {stats.frames}"
        if stats.position_s is not None:
            where += f" {stats.position_s:.1f} s"
        return " | ".join(
            (
                where,
                _label_text(label),
                f"capture {_num(stats.capture_fps, 'fps')}",
                f"model {_num(stats.model_fps, 'fps')}",
                f"latency p95 {_num(stats.latency_ms_p95, 'ms', 0)}",
                f"dropped {stats.dropped_frames}",
                *((stats.notice,) if stats.notice else ()),
            )
        )

    def _render(self) -> RenderableType:
        table = Table(
            title=f"epic-stream: {self.model} on {self.provider}",
            title_justify="left",
            expand=False,
        )
        for column in (
            "stream",
            "position",
            "capture fps",
            "model fps",
            "p95 ms",
            "dropped",
            "label",
        ):
            table.add_column(column, justify="left" if column in ("stream", "label") else "right")
        for row in self.rows.values():
            if row.latest is None:
                table.add_row(
                    row.name, "--", "--", "--", "--", "--", Text("starting...", style="dim")
                )
                continue
            stats, label = row.latest
            position = "--" if stats.position_s is None else f"{stats.position_s:.1f} s"
            table.add_row(
                row.name,
                position,
                _num(stats.capture_fps, ""),
                _num(stats.model_fps, ""),
                _num(stats.latency_ms_p95, "", 0),
                str(stats.dropped_frames),
                Text(stats.notice, style="bold red")
                if stats.notice
                else Text(_label_text(label), style="bold green" if label.is_action else "dim"),
            )
        return table


def _fmt(value: Any) -> str:
    if value is None:
        return "--"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _title(key: str) -> str:
    """``latency_ms_p50`` -> ``latency p50 (ms)``: summary keys put units where people read them."""
    words = key.split("_")
    units = [w for w in words if w in _UNITS]
    words = [w for w in words if w not in _UNITS]
    return " ".join(words) + (f" ({units[0]})" if units else "")


_UNITS = ("ms", "s")


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print the events summary (see :mod:`stream.events`) as rich tables."""
    console = console or Console()
    stream = summary.get("stream")
    title = f"epic-stream summary: {stream}" if stream else "epic-stream summary"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    table.add_row(
        "video label",
        Text(
            f"{summary.get('video_label', '--')} ({_fmt(summary.get('video_score'))})",
            style="bold green",
        ),
    )
    for key in ("frames", "predictions", "dropped_frames"):
        table.add_row(key.replace("_", " "), _fmt(summary.get(key)))
    shown = {
        "type",
        "stream",
        "video_label",
        "video_score",
        "frames",
        "predictions",
        "dropped_frames",
        "segments",
    }
    for key, value in summary.items():
        if key not in shown and not isinstance(value, dict | list):
            table.add_row(_title(key), _fmt(value))
    console.print(table)

    segments = summary.get("segments") or []
    if not segments:
        return
    seg_table = Table(title="segments (runs of the smoothed label)", title_justify="left")
    seg_table.add_column("label")
    for column in ("start s", "end s", "length s", "score"):
        seg_table.add_column(column, justify="right")
    for seg in segments[:SEGMENTS_SHOWN]:
        start, end = seg.get("start_s"), seg.get("end_s")
        length = end - start if start is not None and end is not None else None
        seg_table.add_row(
            str(seg.get("label")), _fmt(start), _fmt(end), _fmt(length), _fmt(seg.get("score"))
        )
    if len(segments) > SEGMENTS_SHOWN:
        seg_table.caption = f"{len(segments) - SEGMENTS_SHOWN} more segments in the events file"
    console.print(seg_table)
