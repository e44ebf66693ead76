"""Miniature datasets in the three layouts train.data reads, written by the tests themselves.

Frames are flat grey images whose level encodes their frame number (``LEVEL * number``), so a
test can read back which frame a clip sampled even after resizing and cropping.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

LEVEL = 4  # grey level per frame number; frames up to 63 stay below 255
FRAME_W, FRAME_H = 40, 30

TRAIN_COLUMNS_A = [
    "uid",
    "participant_id",
    "video_id",
    "narration",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
    "action_class",
]
EPIC100_COLUMNS = [
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
]
# Layout A's validation CSV: the EPIC-100 columns and the original project's action_class.
VAL_COLUMNS_A = [*EPIC100_COLUMNS, "action_class"]


def frame_number(frame: np.ndarray) -> int:
    """The frame number a flat test frame encodes."""
    return round(float(frame.mean()) / LEVEL)


def write_frames(folder: Path, numbers, texture: bool = False) -> None:
    """Frames ``frame_XXXXXXXXXX.jpg`` for each number; ``texture`` adds per-frame noise."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        if texture:
            rng = np.random.default_rng(n)
            image = rng.integers(0, 255, (FRAME_H, FRAME_W, 3), dtype=np.uint8)
        else:
            image = np.full((FRAME_H, FRAME_W, 3), LEVEL * n, np.uint8)
        cv2.imwrite(str(folder / f"frame_{n:010d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 100])


def write_csv(path: Path, columns, rows) -> None:
    """Rows given as dicts; columns they lack are filled with plausible junk."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({c: row.get(c, f"x{i}") for c in columns})


def _row_a(participant, video, start, stop, action_class):
    return {
        "participant_id": participant,
        "video_id": video,
        "start_frame": start,
        "stop_frame": stop,
        "action_class": action_class,
        "all_nouns": "['bag']",
    }


def write_layout_a(root: Path, texture: bool = False) -> Path:
    """Layout a with multi-segment folders and idle frames between segments.

    train/P01/P01_01 frames 1..60: "open bag" 5..20, "take bag" 31..50; 1..4, 21..30, 51..60 idle.
    train/P02/P02_01 frames 1..30: "take bag" 3..25 (as id 1), idle 26..30.
    val/P03/P03_01 frames 1..40: "open bag" 2..12, " take bag" 20..35 (leading space).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_names.json").write_text(json.dumps({"open bag": 0, "take bag": 1}))
    write_frames(root / "train/P01/P01_01", range(1, 61), texture)
    write_frames(root / "train/P02/P02_01", range(1, 31), texture)
    write_frames(root / "val/P03/P03_01", range(1, 41), texture)
    write_csv(
        root / "train_action_classes.csv",
        TRAIN_COLUMNS_A,
        [
            _row_a("P01", "P01_01", 5, 20, "open bag"),
            _row_a("P01", "P01_01", 31, 50, " take bag"),
            _row_a("P02", "P02_01", 3, 25, "1"),
        ],
    )
    write_csv(
        root / "val_action_classes.csv",
        VAL_COLUMNS_A,
        [
            _row_a("P03", "P03_01", 2, 12, "  open bag"),
            _row_a("P03", "P03_01", 20, 35, " take bag"),
        ],
    )
    return root


VERBS = ["take", "put", "open"]
NOUNS = ["tap", "bag", "cup"]


def _row_b(participant, video, start, stop, verb, noun):
    return {
        "participant_id": participant,
        "video_id": video,
        "start_frame": start,
        "stop_frame": stop,
        "verb": VERBS[verb],
        "verb_class": verb,
        "noun": NOUNS[noun],
        "noun_class": noun,
        "narration": f"{VERBS[verb]} {NOUNS[noun]}",
    }


def write_layout_b(root: Path) -> Path:
    """EPIC-KITCHENS-100 annotations, frames under rgb_frames/.

    train (P01_01, 1..60): open bag 2..10, take bag 12..20, take cup 22..30, put bag 32..40,
    open bag 42..50. validation (P02_01, 1..30): take bag 2..10, open tap 12..20 (an action
    training never has), open bag 22..30.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, keys in (("verb", VERBS), ("noun", NOUNS)):
        write_csv(
            root / f"EPIC_100_{name}_classes.csv",
            ["id", "key", "instances", "category"],
            [
                {"id": i, "key": k, "instances": f"['{k}']", "category": "c"}
                for i, k in enumerate(keys)
            ],
        )
    write_frames(root / "rgb_frames/P01/P01_01", range(1, 61))
    write_frames(root / "rgb_frames/P02/P02_01", range(1, 31))
    write_csv(
        root / "EPIC_100_train.csv",
        EPIC100_COLUMNS,
        [
            _row_b("P01", "P01_01", 2, 10, 2, 1),
            _row_b("P01", "P01_01", 12, 20, 0, 1),
            _row_b("P01", "P01_01", 22, 30, 0, 2),
            _row_b("P01", "P01_01", 32, 40, 1, 1),
            _row_b("P01", "P01_01", 42, 50, 2, 1),
        ],
    )
    write_csv(
        root / "EPIC_100_validation.csv",
        EPIC100_COLUMNS,
        [
            _row_b("P02", "P02_01", 2, 10, 0, 1),
            _row_b("P02", "P02_01", 12, 20, 2, 0),
            _row_b("P02", "P02_01", 22, 30, 2, 1),
        ],
    )
    return root


def write_video(path: Path, num_frames: int, fps: float = 10.0, offset: int = 0) -> Path:
    """An mp4v video whose frame i is flat grey ``LEVEL * (i + offset)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (FRAME_W, FRAME_H))
    for i in range(num_frames):
        writer.write(np.full((FRAME_H, FRAME_W, 3), LEVEL * (i + offset), np.uint8))
    writer.release()
    return path


def write_layout_c(root: Path) -> Path:
    """train/{left,right}/*.mp4 and val/{left,right}/*.mp4, 12-20 frames at 10 fps."""
    write_video(root / "train/right/a.mp4", 20)
    write_video(root / "train/right/b.mp4", 16, offset=5)
    write_video(root / "train/left/c.mp4", 20)
    write_video(root / "val/left/d.mp4", 12)
    write_video(root / "val/right/e.mp4", 14)
    return root
