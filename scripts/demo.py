"""`make demo`: the whole product on a video it has never seen, scored against the ground truth.

1. Render a test video that plays several actions in sequence on backgrounds and objects whose
   textures no training video had (train.synth.render_sequence_video, with its ground truth).
2. Stream it through epic-stream with the committed demo model, recording the annotated video
   and the events, exactly as a user would run it.
3. Print ground-truth stretches (the actions and the idle stretches between them) against the
   predictions, and the frame accuracy of the smoothed label over every frame of the video, idle
   ones included; write an animated GIF and a PNG strip of the annotated video.
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
from stream.errors import EpicError
from train.synth import render_sequence_video

console = Console()


def frame_labels(events: list[dict], num_frames: int) -> list[str | None]:
    """The smoothed label each frame carried: the latest prediction whose clip ends at or before it."""
    labels: list[str | None] = [None] * num_frames
    predictions = sorted(
        (e for e in events if e["type"] == "prediction"), key=lambda e: e["frame_index"]
    )
    for here, nxt in zip(predictions, [*predictions[1:], None], strict=True):
        stop = nxt["frame_index"] if nxt else num_frames
        labels[here["frame_index"] : stop] = [here["smoothed"]["label"]] * (
            stop - here["frame_index"]
        )
    return labels


IDLE = "idle"  # the demo model's class for "nothing moves" (train/synth.py)


def stretches(truth: dict) -> list[tuple[str, int, int]]:
    """Every frame of the video in (label, first, last) stretches: the actions and, between and
    around them, the idle stretches."""
    out, frame = [], 0
    for seg in truth["segments"]:
        if seg["start_frame"] > frame:
            out.append((IDLE, frame, seg["start_frame"] - 1))
        out.append((seg["label"], seg["start_frame"], seg["stop_frame"]))
        frame = seg["stop_frame"] + 1
    if frame < truth["frames"]:
        out.append((IDLE, frame, truth["frames"] - 1))
    return out


def score(truth: dict, events: list[dict]) -> tuple[Table, float]:
    """Ground truth against predictions; accuracy over every frame, idle ones included (a frame
    before the first prediction has no label and counts as wrong)."""
    fps, n = truth["fps"], truth["frames"]
    labels = frame_labels(events, n)
    table = Table(title="Ground truth vs epic-stream (smoothed label)", title_style="bold")
    for col in ("truth", "start s", "end s", "predicted (majority)", "frames right"):
        table.add_column(col, justify="left" if col == "truth" or "pred" in col else "right")
    right = action_right = action_total = 0
    for label, first, last in stretches(truth):
        span = labels[first : last + 1]
        hits = sum(shown == label for shown in span)
        named = [shown for shown in span if shown is not None]
        majority = max(set(named), key=named.count) if named else "-"
        right += hits
        if label != IDLE:
            action_right, action_total = action_right + hits, action_total + len(span)
        style = "green" if majority == label else "red"
        table.add_row(
            label,
            f"{first / fps:.1f}",
            f"{(last + 1) / fps:.1f}",
            f"[{style}]{majority}[/]",
            f"{hits}/{len(span)} ({hits / len(span):.0%})",
        )
    accuracy = right / n if n else 0.0
    table.caption = (
        f"frame accuracy of the smoothed label over all {n} frames, idle included: "
        f"{accuracy:.3f} ({fps:g} fps); over the {action_total} action frames alone: "
        f"{action_right / max(1, action_total):.3f}"
    )
    return table, accuracy


def predicted_segments(summary: dict) -> Table:
    table = Table(title="Segments epic-stream reported (events summary)", title_style="bold")
    for col in ("label", "start s", "end s", "mean score"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for seg in summary["segments"]:
        table.add_row(
            seg["label"], f"{seg['start_s']:.1f}", f"{seg['end_s']:.1f}", f"{seg['score']:.2f}"
        )
    return table


def truth_at(truth: dict, frame: int) -> str:
    for seg in truth["segments"]:
        if seg["start_frame"] <= frame <= seg["stop_frame"]:
            return seg["label"]
    return "idle"


def write_pictures(
    video: Path, truth: dict, gif: Path, strip: Path, *, width: int = 256, every_s: float = 0.25
) -> None:
    """An animated GIF (4 frames a second of video) and a strip of 8 frames of the recording,
    each with the ground truth written under it."""
    from PIL import Image  # pillow comes with the train extra (matplotlib, torchvision)

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    step = max(1, round(fps * every_s))
    frames, index = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % step == 0:
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
            band = np.zeros((22, width, 3), np.uint8)
            cv2.putText(
                band,
                f"truth: {truth_at(truth, index)}",
                (6, 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
            frames.append(np.vstack([small, band]))
        index += 1
    cap.release()
    if not frames:
        raise EpicError(f"{video} holds no frames to draw")
    images = [Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for f in frames]
    images[0].save(
        gif,
        save_all=True,
        append_images=images[1:],
        duration=round(1000 * every_s),
        loop=0,
        optimize=True,
    )
    picks = np.linspace(0, len(frames) - 1, 8).round().astype(int)
    row1, row2 = (
        np.hstack([frames[i] for i in picks[:4]]),
        np.hstack([frames[i] for i in picks[4:]]),
    )
    cv2.imwrite(str(strip), np.vstack([row1, row2]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="ONNX model (default: epic-stream's demo model)"
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the demo's outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-display", action="store_true")
    # The test video is 14 fps and the demo model runs a clip in ~10 ms: a prediction for every
    # frame costs nothing, and it keeps the smoothed label close behind the 1.5 s idle stretches
    # (epic-stream's default, about 4 a second, is every 4th frame here).
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="epic-stream --every: one prediction every N frames (default 1)",
    )
    # The video's actions last 2-3 s between 1.5 s idle stretches: every 0.35 s the label lags
    # behind a change costs a few percent. Predicting every frame, the demo can smooth over a
    # shorter time than epic-stream's default (0.5 s, made for 4 predictions a second) and still
    # hide single glitches (one frame weighs 1 - exp(-1/14 / 0.15) = 0.38).
    parser.add_argument(
        "--tau",
        type=float,
        default=0.15,
        help="epic-stream --tau: the EMA time constant in seconds (default 0.15)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    video, record, events_path = (
        out / "demo_input.mp4",
        out / "demo_out.mp4",
        out / "demo_events.jsonl",
    )
    started = time.monotonic()
    try:
        with console.status("rendering the test video (unseen backgrounds and objects)"):
            render_sequence_video(video, seed=args.seed)
        truth = json.loads(video.with_suffix(".mp4.json").read_text())
        console.print(
            f"[bold]1.[/] test video {video}: {len(truth['segments'])} actions, "
            f"{truth['frames']} frames at {truth['fps']:g} fps"
        )
        command = ["--source", str(video), "--record", str(record), "--events", str(events_path)]
        command += ["--every", str(args.every), "--tau", str(args.tau)]
        if args.model:
            command += ["--model", args.model]
        if args.no_display:
            command.append("--no-display")
        console.print(f"[bold]2.[/] epic-stream {' '.join(command)}")
        code = stream_main(command)
        if code != 0:
            return code
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
        table, accuracy = score(truth, events)
        console.print(table)
        console.print(predicted_segments(events[-1]))
        write_pictures(record, truth, out / "demo_out.gif", out / "demo_strip.png")
    except EpicError as exc:
        console.print(f"[red]make demo: error:[/] {exc}")
        return 2
    console.print(
        f"[bold]3.[/] wrote {record}, {events_path}, {out / 'demo_out.gif'} and {out / 'demo_strip.png'} "
        f"in {time.monotonic() - started:.0f} s; smoothed-label frame accuracy over all frames "
        f"[bold]{accuracy:.3f}[/]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
