"""The overlay: legible at any frame size, drawn where expected, never off the frame's edges."""

from __future__ import annotations

import numpy as np
import pytest

from stream.overlay import (
    ELLIPSIS,
    FONT,
    MUTED,
    TRACK,
    OverlayState,
    class_colour,
    draw_overlay,
    fit_text,
    layout_for,
    status_texts,
)
from stream.prediction import Label

BACKGROUND = (200, 180, 160)
SIZES = [(240, 320), (1080, 1920), (120, 160), (1920, 1080)]  # (height, width); last is portrait
LONG = "take the big chopping knife out of the second drawer next to the sink " * 3
TOP5 = (("cut onion", 0.62), ("wash", 0.2), ("open fridge", 0.1), (LONG, 0.05), ("put", 0.03))


def state(**changes) -> OverlayState:
    base = OverlayState(
        label=Label(0, "cut onion", 0.62),
        top_k=TOP5,
        capture_fps=29.97,
        model_fps=4.0,
        latency_ms=118.0,
        stale=False,
        source_name="kitchen.mp4",
    )
    return OverlayState(**{**base.__dict__, **changes})


def render(height: int, width: int, s: OverlayState) -> tuple[np.ndarray, np.ndarray]:
    """Draw on a view inside a larger canvas; return (frame view, changed mask of the canvas)."""
    canvas = np.empty((height + 20, width + 20, 3), np.uint8)
    canvas[:] = BACKGROUND
    frame = canvas[10:-10, 10:-10]
    draw_overlay(frame, s)
    changed = np.any(canvas != np.array(BACKGROUND, np.uint8), axis=2)
    return frame, changed


def has_colour(pixels: np.ndarray, colour) -> bool:
    return bool(np.any(np.all(pixels == np.array(colour, np.uint8), axis=-1)))


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("name", ["cut onion", LONG, "no action"])
def test_nothing_is_drawn_off_the_frame_or_in_its_margin(height, width, name):
    label = Label.no_action(0.2) if name == "no action" else Label(0, name, 0.9)
    _, changed = render(height, width, state(label=label, source_name=LONG))
    margin = layout_for(height, width).margin
    inner = np.zeros_like(changed)
    inner[10 + margin : 10 + height - margin, 10 + margin : 10 + width - margin] = True
    assert changed.any()
    assert not (changed & ~inner).any(), "text or boxes ran into the margin or off the frame"


@pytest.mark.parametrize(("height", "width"), [(240, 320), (1080, 1920)])
def test_label_bars_and_status_are_where_expected(height, width):
    frame, _ = render(height, width, state())
    untouched = np.all(frame == np.array(BACKGROUND, np.uint8), axis=2)
    lay = layout_for(height, width)
    m = lay.margin
    assert not untouched[m : m + lay.label_height, m : m + lay.panel_width].any()  # label box
    assert not untouched[height - m - 2, m + 2 : m + 20].any()  # status strip, bottom left
    # the class colour marks both the label box accent and the top-1 bar
    assert has_colour(
        frame[m : m + lay.label_height, m : m + lay.accent], class_colour("cut onion")
    )
    below = frame[m + lay.label_height : m + lay.label_height + lay.row_height + lay.pad]
    assert has_colour(below, class_colour("cut onion"))
    # the right-hand side of the picture is left alone
    assert untouched[height // 4 : 3 * height // 4, m + lay.panel_width + 1 : width - m].all()


def test_1080p_text_is_larger_than_240p_text():
    small, large = layout_for(240, 320), layout_for(1080, 1920)
    assert large.label.height > 2 * small.label.height
    assert small.bars.height >= 8  # legible on a 240-line frame
    assert large.panel_width < 1920 / 2  # and the overlay does not cover the picture at 1080p


@pytest.mark.parametrize(("height", "width"), [(240, 320), (1080, 1920)])
def test_each_extra_class_adds_a_bar_row(height, width):
    lay = layout_for(height, width)
    status_top = height - lay.margin - (lay.status.height + lay.status.depth + 2 * lay.pad)

    def lowest_drawn_row(k: int) -> int:
        frame, _ = render(height, width, state(top_k=TOP5[:k]))
        drawn = np.any(frame[:status_top] != np.array(BACKGROUND, np.uint8), axis=(1, 2))
        return int(np.flatnonzero(drawn).max())

    bottoms = [lowest_drawn_row(k) for k in range(6)]
    assert bottoms == sorted(set(bottoms)), f"rows did not grow with k: {bottoms}"


def test_bar_length_follows_the_score():
    def coloured_pixels(score: float) -> int:
        frame, _ = render(1080, 1920, state(top_k=(("cut onion", score),)))
        return int(np.all(frame == np.array(class_colour("cut onion"), np.uint8), axis=2).sum())

    accent_only = coloured_pixels(0.0)
    quarter, three_quarters = (
        coloured_pixels(0.25) - accent_only,
        coloured_pixels(0.75) - accent_only,
    )
    assert quarter > 0
    assert three_quarters == pytest.approx(3 * quarter, rel=0.1)


def test_no_action_and_stale_results_are_greyed():
    lay = layout_for(1080, 1920)
    m = lay.margin
    for s in (state(label=Label.no_action(0.3), top_k=()), state(stale=True)):
        frame, _ = render(1080, 1920, s)
        accent = frame[m : m + lay.label_height, m : m + lay.accent]
        assert has_colour(accent, MUTED)
        assert not has_colour(frame, class_colour("cut onion"))
    fresh, _ = render(1080, 1920, state())
    stale, _ = render(1080, 1920, state(stale=True))
    label_box = np.s_[m : m + lay.label_height, m : m + lay.panel_width]
    assert fresh[label_box].max(axis=2).max() > stale[label_box].max(axis=2).max()  # no bright text


def test_no_classes_draws_the_label_box_only():
    height, width = 1080, 1920
    lay = layout_for(height, width)
    frame, _ = render(height, width, state(top_k=()))
    below_label = frame[lay.margin + lay.label_height + 1 : height // 2]
    assert np.all(below_label == np.array(BACKGROUND, np.uint8))


def test_fit_text_truncates_with_an_ellipsis():
    assert fit_text("cut", FONT, 1.0, 2, 1000) == "cut"
    cut = fit_text(LONG, FONT, 1.0, 2, 300)
    assert cut.endswith(ELLIPSIS)
    assert LONG.startswith(cut[: -len(ELLIPSIS)])
    longer = fit_text(LONG, FONT, 1.0, 2, 600)
    assert len(longer) > len(cut)
    assert fit_text(LONG, FONT, 1.0, 2, 0) == ""


def test_status_line_shows_missing_numbers_as_dashes():
    full, *_ = status_texts(
        state(capture_fps=None, model_fps=float("nan"), latency_ms=None, source_name="")
    )
    assert full == "capture -- fps | model -- fps | latency -- ms"
    lines = status_texts(state())
    assert lines[0] == "kitchen.mp4 | capture 30.0 fps | model 4.0 fps | latency 118 ms"
    assert len(lines[-1]) < len(lines[1])  # a shorter form for narrow frames


def test_rejects_frames_that_are_not_bgr_uint8():
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(np.zeros((240, 320), np.uint8), state())
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(np.zeros((240, 320, 3), np.float32), state())


@pytest.mark.parametrize(("height", "width"), [(96, 128), (120, 160), (240, 320)])
def test_bars_that_do_not_fit_are_left_out_rather_than_covering_the_status_line(height, width):
    lay = layout_for(height, width)
    frame, _ = render(height, width, state())
    status_top = height - lay.margin - (lay.status.height + lay.status.depth + 2 * lay.pad)
    assert not has_colour(frame[status_top:], TRACK)


def test_broken_scores_and_empty_names_do_not_break_the_frame():
    s = state(label=Label(0, "", float("nan")), top_k=(("", float("nan")), ("x", -0.5), ("y", 7.0)))
    _, changed = render(240, 320, s)  # a NaN once crashed round() in the bar width
    assert changed.any()
