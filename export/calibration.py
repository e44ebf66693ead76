"""Clips for static int8 calibration, sampled from a folder of the user's own footage.

``epic-export --int8 --calibration DIR``: DIR holds videos (mp4, avi, mov, mkv, webm) and/or frame
folders (a folder of .jpg/.png frames in name order), at any depth. Each clip is what epic-stream
would feed the model live: ``T`` frames evenly spaced over the model's ``clip_seconds`` of source
time, through ``stream.preprocess`` (via training's eval transform), so the activation ranges the
quantizer measures are the ones it will meet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import CalibrationError
from train.data import (
    VIDEO_SUFFIXES,
    clip_indices,
    probe_video,
    read_image,
    read_video_frames,
)
from train.errors import DataError
from train.transforms import EvalTransform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# A frame folder does not say its rate; EPIC-KITCHENS and most extracted frames are 30-60 fps.
FRAME_FOLDER_FPS = 30.0
DEFAULT_CLIPS = 32


@dataclass(frozen=True)
class CalibrationSource:
    """One video or frame folder: where its frames are and how many there are."""

    path: Path
    frames: int
    fps: float
    images: tuple[Path, ...] = ()  # a frame folder's files in order; empty for a video

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        if not self.images:
            return read_video_frames(self.path, indices)
        return [read_image(self.images[int(i)], str(self.path)) for i in indices]


def source_of(path: Path) -> CalibrationSource | None:
    """``path`` as a source: a video, or a folder holding frame images; else None."""
    try:
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            count, fps = probe_video(path, FRAME_FOLDER_FPS)
            return CalibrationSource(path, count, fps)
        if path.is_dir():
            images = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if images:
                return CalibrationSource(path, len(images), FRAME_FOLDER_FPS, tuple(images))
    except DataError as exc:
        raise CalibrationError(f"--calibration: {exc}") from None
    return None


def find_sources(folder: str | Path) -> list[CalibrationSource]:
    """Every video and frame folder under ``folder``, sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(
            f"--calibration {root}: no such folder; give a folder of videos or frame folders "
            "like the ones the model will see"
        )
    found = (source_of(p) for p in sorted([root, *root.rglob("*")]) if not p.name.startswith("."))
    sources = [s for s in found if s is not None]
    if not sources:
        raise CalibrationError(
            f"--calibration {root} holds no videos ({', '.join(VIDEO_SUFFIXES)}) and no folders "
            f"of frames ({', '.join(IMAGE_SUFFIXES)})"
        )
    return sources


def sample_clips(
    sources: Sequence[CalibrationSource],
    *,
    count: int,
    num_frames: int,
    image_size: int,
    clip_seconds: float,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``count`` uint8 BGR clips [count, T, S, S, 3] from ``sources`` (:func:`find_sources`).

    Clips are shared out over the sources in proportion to their length (each gets at least one
    while there are clips to give), and placed at random inside each source with a fixed seed,
    so the same folder always gives the same clips.
    """
    if count < 1:
        raise CalibrationError(f"--calibration-clips must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    lengths = np.array([s.frames for s in sources], dtype=np.float64)
    order = np.argsort(-lengths, kind="stable")
    shares = np.zeros(len(sources), dtype=np.int64)
    shares[order[: min(count, len(sources))]] = 1
    left = count - int(shares.sum())
    if left > 0:
        extra = np.floor(left * lengths / lengths.sum()).astype(np.int64)
        extra[order[: left - int(extra.sum())]] += 1
        shares += extra
    transform = EvalTransform(image_size)
    clips = np.empty((count, num_frames, image_size, image_size, 3), np.uint8)
    done = 0
    for source, share in zip(sources, shares, strict=True):
        span = clip_seconds * source.fps
        for _ in range(int(share)):
            indices = clip_indices(0, source.frames - 1, num_frames, span, rng=rng)
            try:
                frames = source.read(indices)
            except DataError as exc:
                raise CalibrationError(f"--calibration: {exc}") from None
            clips[done] = transform(frames)
            done += 1
            if progress is not None:
                progress(done, count)
    return clips
