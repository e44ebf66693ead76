"""The terminal view: plain lines without a terminal, a live panel with one, a summary table at exit."""

from __future__ import annotations

import io

from rich.console import Console

from stream.console import SEGMENTS_SHOWN, LiveConsole, StreamStats, print_summary
from stream.prediction import Label

NAMES = ("cut onion", "wash", "open fridge")


def stats(frames: int, **changes) -> StreamStats:
    values = dict(
        frames=frames,
        predictions=frames // 8,
        dropped_frames=2,
        capture_fps=29.97,
        model_fps=3.75,
        latency_ms_p50=121.4,
        latency_ms_p95=180.2,
        position_s=frames / 30,
    )
    return StreamStats(**{**values, **changes})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_without_a_terminal_prints_plain_lines_every_interval():
    console, out = plain_console()
    clock = FakeClock()
    view = LiveConsole(
        "kitchen.mp4",
        "tsf.onnx",
        "CPUExecutionProvider",
        900,
        NAMES,
        console=console,
        log_interval_s=2.0,
        clock=clock,
    )
    with view:
        for frame in range(1, 301):  # 10 s of updates, one per frame
            clock.now = frame / 30
            view.update(
                stats(frame), Label(0, "cut onion", 0.87), (("cut onion", 0.87), ("wash", 0.1))
            )
    text = out.getvalue()
    assert "\x1b" not in text  # no control codes
    lines = text.splitlines()
    assert (
        lines[0]
        == "source kitchen.mp4 (900 frames) | model tsf.onnx (3 classes) | provider CPUExecutionProvider"
    )
    progress = lines[1:]
    assert 5 <= len(progress) <= 7  # one every 2 s over 10 s, plus the final line
    assert progress[-1] == (
        "frame 300/900 (33%) 10.0 s | cut onion 0.87 | capture 30.0 fps | model 3.8 fps "
        "| latency p50 121 ms p95 180 ms | dropped 2"
    )


def test_plain_lines_for_a_live_source_with_missing_figures():
    console, out = plain_console()
    view = LiveConsole(
        "webcam:0", "tsf.onnx", "CUDAExecutionProvider", None, NAMES, console=console
    )
    with view:
        view.update(
            stats(
                5,
                capture_fps=None,
                model_fps=None,
                latency_ms_p50=None,
                latency_ms_p95=None,
                position_s=None,
            ),
            Label.no_action(0.2),
        )
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("source webcam:0 (live)")
    assert (
        lines[1]
        == "frame 5 | no action | capture -- | model -- | latency p50 -- p95 -- | dropped 2"
    )


def test_on_a_terminal_shows_a_live_panel_with_progress():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    view = LiveConsole(
        "kitchen.mp4", "tsf.onnx", "CPUExecutionProvider", 900, NAMES, console=console
    )
    assert view.interactive
    with view:
        view.update(stats(450), Label(1, "wash", 0.66), (("wash", 0.66), ("open fridge", 0.2)))
    text = out.getvalue()
    for expected in (
        "epic-stream",
        "kitchen.mp4",
        "CPUExecutionProvider",
        "wash 0.66",
        "open fridge",
        "450/900",
        "p95 180 ms",
        "2 frames",
    ):
        assert expected in text, expected


def test_summary_table_lists_figures_and_segments():
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    summary = {
        "type": "summary",
        "frames": 900,
        "predictions": 112,
        "dropped_frames": 0,
        "video_label": "cut onion",
        "video_score": 0.71234,
        "segments": [
            {"label": "cut onion", "start_s": 0.0, "end_s": 12.5, "score": 0.8},
            {"label": "no action", "start_s": 12.5, "end_s": 14.0, "score": 0.3},
            {"label": "wash", "start_s": 14.0, "end_s": 30.0, "score": 0.77},
        ],
        "provider": "CPUExecutionProvider",
        "latency_ms_p50": 120.5,
    }
    print_summary(summary, console)
    text = console.file.getvalue()
    assert "cut onion (0.71)" in text
    assert "CPUExecutionProvider" in text
    assert "latency p50 (ms)" in text
    rows = [line for line in text.splitlines() if "12.50" in line or "14.00" in line]
    assert any("cut onion" in r and "0.00" in r and "12.50" in r for r in rows)
    assert any("no action" in r and "1.50" in r for r in rows)
    assert any("wash" in r and "16.00" in r and "0.77" in r for r in rows)


def test_summary_shows_the_first_segments_and_counts_the_rest():
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    segments = [
        {"label": f"class{i}", "start_s": i, "end_s": i + 1.0, "score": 0.5} for i in range(50)
    ]
    print_summary({"video_label": "class0", "video_score": 0.5, "segments": segments}, console)
    text = console.file.getvalue()
    assert f"class{SEGMENTS_SHOWN - 1}" in text
    assert f"class{SEGMENTS_SHOWN} " not in text
    assert f"{50 - SEGMENTS_SHOWN} more segments in the events file" in text
