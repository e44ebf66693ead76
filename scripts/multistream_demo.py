"""`make demo-multi`: four cameras in one epic-stream process, and the picture of its window grid.

1. Render four test videos of the synthetic task (different seeds: different actions, objects and
   backgrounds), as four cameras would see four benches.
2. Stream them in one epic-stream process (`--source` four times, one shared model session,
   `--realtime`, so they play as live cameras), each with its own recording and one events file.
3. Write the window's grid (the function the window draws with) from the four recordings, at a
   few moments, as demo_multi_grid.png, and print what each stream reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from stream.__main__ import main as stream_main
from stream.window import compose_grid
from train.synth import render_sequence_video

console = Console()
STREAMS = ("bench", "sink", "stove", "door")
SEQUENCES = (
    (("slide", 2.5), ("approach", 2.5)),
    (("recede", 2.5), ("slide", 2.5)),
    (("approach", 2.5), ("recede", 2.5)),
    (("slide", 2.0), ("recede", 3.0)),
)


def frame_at(video: Path, index: int) -> np.ndarray | None:
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    return frame if ok else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo-multi", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("demo_multi"), help="folder for the outputs"
    )
    parser.add_argument("--picture", type=Path, default=None, help="where the grid picture goes")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with console.status("rendering four test videos"):
        videos = []
        for k, (name, sequence) in enumerate(zip(STREAMS, SEQUENCES, strict=True)):
            video = out / f"{name}_input.mp4"
            render_sequence_video(video, sequence, seed=10 + k, idle_seconds=1.0)
            videos.append(video)
    events = out / "events.jsonl"
    command = [
        "--record",
        str(out / "{stream}.mp4"),
        "--events",
        str(events),
        "--realtime",
        "--no-display",
    ]
    for name, video in zip(STREAMS, videos, strict=True):
        command += ["--source", f"{name}={video}"]
    console.print(f"epic-stream {' '.join(command)}")
    code = stream_main(command)
    if code != 0:
        return code
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    table = Table(title="one process, four streams, one model session", title_style="bold")
    for column in ("stream", "frames", "predictions", "p95 latency ms", "capture fps", "segments"):
        table.add_column(column, justify="left" if column in ("stream", "segments") else "right")
    for summary in (line for line in lines if line["type"] == "summary"):
        segments = ", ".join(s["label"] for s in summary["segments"] if s["label"] != "no action")
        table.add_row(
            summary["stream"],
            str(summary["frames"]),
            str(summary["predictions"]),
            f"{summary['latency_ms_p95']:.0f}",
            f"{summary['fps']:.1f}",
            segments,
        )
    console.print(table)
    recordings = [out / f"{name}.mp4" for name in STREAMS]
    counts = [int(cv2.VideoCapture(str(r)).get(cv2.CAP_PROP_FRAME_COUNT)) for r in recordings]
    moment = int(min(counts) * 0.78)  # inside every stream's second action
    grid = compose_grid([frame_at(r, moment) for r in recordings])
    picture = args.picture or out / "demo_multi_grid.png"
    cv2.imwrite(str(picture), grid)
    console.print(
        f"wrote {', '.join(map(str, recordings))}, {events} and {picture} in "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
