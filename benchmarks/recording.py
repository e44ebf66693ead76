"""(9) Recording: what ``--record`` costs the presenter per frame, H.264 (PyAV) vs OpenCV mp4v.

Each frame the presenter records is encoded in its own thread, so the encode time per frame is
taken from the frame rate the presenter can keep. Timed here through :class:`VideoRecorder`
itself (the BGR to yuv420p conversion, the encoder, the muxer and the file), on real footage
(BBB's frames scaled to each size), for libx264 at a few presets with the recorder's other
options (zerolatency, fragmented MP4), and for OpenCV's mp4v writer, the fallback where PyAV
cannot be had. The recorder's preset is marked.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from unittest import mock

import numpy as np

import stream.recorder
from benchmarks.common import Bench, SectionResult, Stats, md_table
from benchmarks.footage import footage_video, read_frames
from stream.recorder import VideoRecorder

TITLE = "9. Recording: encode cost per frame, H.264 (PyAV libx264) vs OpenCV mp4v"
PRESETS = ("ultrafast", "superfast", "veryfast", "faster")
SIZES = ((640, 480), (1280, 720))
FRAMES = 120


def encode_ms(frames: list[np.ndarray], path: Path, preset: str | None, fps: float = 25.0) -> float:
    """ms per frame to record ``frames`` at ``path`` (opening and closing the file included);
    ``preset`` None: OpenCV's mp4v, as where PyAV is missing."""
    if preset is None:
        backend = mock.patch.object(stream.recorder, "_load_pyav", lambda: (None, "benchmark"))
    else:
        backend = mock.patch.dict(stream.recorder.H264_OPTIONS, preset=preset)
    logger = logging.getLogger("stream.recorder")
    level, logger.level = logger.level, logging.ERROR  # the fallback's warning, once per run
    try:
        with backend:
            start = time.perf_counter()
            recorder = VideoRecorder(path, fps=fps)
            for i, frame in enumerate(frames):
                recorder.write(frame, i / fps)
            recorder.close()
            elapsed = time.perf_counter() - start
    finally:
        logger.level = level
    return elapsed * 1000.0 / len(frames)


def run(bench: Bench) -> SectionResult:
    smoke = bench.profile.name == "smoke"
    sizes, count = (((160, 120),), 10) if smoke else (SIZES, FRAMES)
    presets = (PRESETS[0], stream.recorder.H264_OPTIONS["preset"]) if smoke else PRESETS
    writers: list[str | None] = [*dict.fromkeys(presets), None]
    result = SectionResult("recording", TITLE)
    times: dict[str, dict[str, list[float]]] = {}
    sizes_out: dict[str, int] = {}
    with bench.task(TITLE, len(sizes) * bench.profile.repeats) as advance:
        for width, height in sizes:
            frames = list(read_frames(footage_video(bench.cache, count, (width, height))))
            key = f"{width}x{height}"
            times[key] = {str(w): [] for w in writers}
            for rep in range(bench.profile.repeats):
                for writer in writers:
                    path = bench.work / f"rec-{key}-{writer or 'mp4v'}.mp4"
                    times[key][str(writer)].append(encode_ms(frames, path, writer))
                    sizes_out[f"{key} {writer or 'mp4v'}"] = path.stat().st_size
                advance(1, f"{key}, run {rep + 1}")
    chosen = stream.recorder.H264_OPTIONS["preset"]
    rows = []
    for writer in writers:
        name = "OpenCV mp4v (fallback)" if writer is None else f"libx264 {writer}"
        if writer == chosen:
            name = f"**{name} (the recorder's)**"
        row = [name]
        for width, height in sizes:
            key = f"{width}x{height}"
            stats = Stats.of(times[key][str(writer)])
            kib = sizes_out[f"{key} {writer or 'mp4v'}"] / 1024 / count
            row += [stats.fmt(2), f"{kib:.1f}"]
        rows.append(row)
    header = ["writer"]
    for width, height in sizes:
        header += [f"ms/frame {width}x{height}", f"KiB/frame {width}x{height}"]
    for width, height in sizes:
        key = f"{width}x{height}"
        h264 = Stats.of(times[key][chosen]).median
        mp4v = Stats.of(times[key]["None"]).median
        result.headline.append(
            (f"Recording {key}: ms per frame, H.264 {chosen} vs mp4v", f"{h264:.1f} vs {mp4v:.1f}")
        )
    result.data = {"ms_per_frame": times, "bytes": sizes_out, "frames": count, "preset": chosen}
    result.body = "\n".join(
        [
            f"What: {count} frames of BBB footage scaled to each size, recorded through "
            "`VideoRecorder` (open, write each frame at its source time, close), in this process; "
            f"ms per frame over the whole file, {bench.profile.repeats} runs (median [min-max]). "
            "libx264 with `tune=zerolatency`, CRF 23, fragmented MP4, at each preset; the "
            "recorder uses the marked one. KiB/frame: the file's size over its frames (last run).",
            "",
            md_table(header, rows),
        ]
    )
    return result
