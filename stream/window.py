"""The OpenCV window: one tile per stream in a grid, shown by the main thread (OpenCV's GUI must).

The streams' presenters hand their newest annotated frame to a :class:`~stream.sinks.TileSink`;
the window takes what is new about 30 times a second and redraws the grid. A single stream is
shown at its own size, as it always was. q or Esc (or closing the window) asks every stream to stop.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from stream.sinks import TileSink

WINDOW_TITLE = "epic-stream"
SINGLE_MAX_WIDTH = 1920  # one stream: shown as recorded, unless it is larger than a screen
TILE_MAX_WIDTH = 640  # several streams: each tile at most this wide
REFRESH_S = 1.0 / 30.0


def display_available() -> bool:
    """Whether an OpenCV window can be shown: on Linux and BSD, only with an X or Wayland display."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def tile_width(streams: int) -> int:
    return SINGLE_MAX_WIDTH if streams == 1 else TILE_MAX_WIDTH


def compose_grid(tiles: Sequence[np.ndarray | None]) -> np.ndarray:
    """Tiles in a near-square grid (row by row), each centred in a cell of the largest tile's size;
    a stream with no frame yet is a black cell."""
    present = [t for t in tiles if t is not None]
    if not present:
        return np.zeros((240, 320, 3), np.uint8)
    if len(tiles) == 1:
        return present[0]
    cell_h = max(t.shape[0] for t in present)
    cell_w = max(t.shape[1] for t in present)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = np.zeros((rows * cell_h, cols * cell_w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        if tile is None:
            continue
        r, c = divmod(k, cols)
        h, w = tile.shape[:2]
        y = r * cell_h + (cell_h - h) // 2
        x = c * cell_w + (cell_w - w) // 2
        grid[y : y + h, x : x + w] = tile
    return grid


class GridWindow:
    """The window, or nothing when it is not wanted or there is no display."""

    def __init__(self, wanted: bool, streams: int, say: Callable[[str], None]) -> None:
        self._say = say
        self.enabled = wanted and display_available()
        self._opened = False
        self.tiles: list[TileSink] = (
            [TileSink(tile_width(streams)) for _ in range(streams)] if self.enabled else []
        )
        self._latest: list[np.ndarray | None] = [None] * streams
        if wanted and not self.enabled:
            say(
                "no display found (DISPLAY/WAYLAND_DISPLAY unset): running headless; "
                "pass --no-display to silence this"
            )

    def refresh(self) -> bool:
        """Redraw what is new; False when the user asked to quit."""
        if not self.enabled:
            return True
        changed = False
        for k, tile in enumerate(self.tiles):
            image = tile.take()
            if image is not None:
                self._latest[k], changed = image, True
        try:
            if changed:
                cv2.imshow(WINDOW_TITLE, compose_grid(self._latest))
                self._opened = True
            if not self._opened:
                return True
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), ord("Q"), 27):
                return False
            return cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error as exc:  # an OpenCV built without GUI support
            self.enabled = False
            self._say(
                f"cannot open a window ({str(exc).strip().splitlines()[-1]}); running headless"
            )
            return True

    def close(self) -> None:
        if self._opened:
            try:
                cv2.destroyWindow(WINDOW_TITLE)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._opened = False
