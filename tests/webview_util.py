"""Helpers for the ``--serve`` tests: a colour model, a video of known colour segments, the CLI.

The colour model's answer is a pure function of the frames: the softmax of the clip's mean blue,
green and red, named wash, cut and stir. A clip that straddles two segments mixes only those two
colours, so the smoothed label can only ever be one of them: the label sequence a run shows is
exactly the segments'.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import contract_metadata, save_graph

COLOURS = {"wash": (255, 0, 0), "cut": (0, 255, 0), "stir": (0, 0, 255)}  # class: its BGR colour
SEGMENTS = (("stir", 2.0), ("cut", 2.0), ("wash", 2.0), ("stir", 2.0))
REPO = Path(__file__).resolve().parents[1]


def colour_model(
    path: Path, *, num_frames: int = 4, image_size: int = 16, clip_seconds=0.4
) -> Path:
    """Classes wash, cut, stir: softmax(0.05 * mean B, G, R of the clip)."""
    frames = helper.make_tensor_value_info(
        "frames", TensorProto.UINT8, ["batch", num_frames, image_size, image_size, 3]
    )
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["means"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["means", "gain"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    gain = numpy_helper.from_array(np.array(0.05, np.float32), "gain")
    graph = helper.make_graph(nodes, "colour", [frames], [scores], [gain])
    meta = contract_metadata(list(COLOURS), clip_seconds, num_frames, image_size, "colour model")
    return save_graph(graph, path, meta)


def segment_video(
    path: Path,
    segments: Sequence[tuple[str, float]] = SEGMENTS,
    *,
    fps: float = 20.0,
    size: tuple[int, int] = (320, 240),
    noise: bool = False,
) -> Path:
    """Solid-colour segments with a white square moving across, so every frame differs.

    ``noise``: the top half is grey noise (the same in every channel, so the label stays the
    segment's colour), which makes big JPEGs.
    """
    rng = np.random.default_rng(0)
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    index = 0
    for colour, seconds in segments:
        for _ in range(round(seconds * fps)):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = COLOURS[colour]
            x = (index * 7) % (width - 40)
            frame[height - 50 : height - 10, x : x + 40] = 255
            if noise:
                frame[: height // 2] = rng.integers(0, 256, (height // 2, width, 1), np.uint8)
            writer.write(frame)
            index += 1
    writer.release()
    return Path(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers at all (any status), or fail with the process's output."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"epic-stream exited early ({process.returncode}): {process.stderr.read()}"
            )
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def serving(args: Sequence[str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    """``epic-stream ARGS`` in its own process group, killed with its group whatever happens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "--no-display", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for pipe in (process.stdout, process.stderr):
            pipe.close()
