"""The synthetic dataset: layout A on disk, motion as labelled, and no class readable off one frame."""

from __future__ import annotations

import csv
import itertools
import json
import re

import cv2
import numpy as np
import pytest

from train import synth

LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)
# Between the background's and the object's luma ranges: above it is object, below background.
OBJECT_THRESHOLD = 255 * (synth.BACKGROUND_LUMA[1] + synth.OBJECT_LUMA[0]) / 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "DATA"
    return synth.generate_dataset(root, seed=3, videos=3, val_videos=2, segments=4, size=48)


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def object_mask(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) @ LUMA_BGR > OBJECT_THRESHOLD


def test_layout_a_files_and_columns(dataset):
    names = json.loads((dataset / "class_names.json").read_text())
    assert names == {name: i for i, name in enumerate(synth.ACTIONS)}
    meta = json.loads((dataset / "synth.json").read_text())
    assert meta["fps"] == synth.DEFAULT_FPS
    assert f"--data.fps {synth.DEFAULT_FPS:g}" in (dataset / "README.txt").read_text()

    columns, train = read_rows(dataset / "train_action_classes.csv")
    assert tuple(columns) == synth.TRAIN_COLUMNS
    columns, val = read_rows(dataset / "val_action_classes.csv")
    assert tuple(columns) == synth.VAL_COLUMNS
    assert len(train) == 3 * 4 and len(val) == 2 * 4

    for split, rows in (("train", train), ("val", val)):
        for row in rows:
            assert row["action_class"].strip() in names
            assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d\d", row["start_timestamp"])
            folder = dataset / split / row["participant_id"] / row["video_id"]
            start, stop = int(row["start_frame"]), int(row["stop_frame"])
            assert 1 <= start < stop
            assert (folder / f"frame_{start:010d}.jpg").is_file()
            assert (folder / f"frame_{stop:010d}.jpg").is_file()
    # Like the real annotations, some class names carry a leading space.
    assert any(r["action_class"].startswith(" ") for r in train + val)
    assert any(not r["action_class"].startswith(" ") for r in train + val)


def test_videos_hold_several_segments_with_idle_frames_between(dataset):
    _, rows = read_rows(dataset / "train_action_classes.csv")
    by_video: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        by_video.setdefault(row["video_id"], []).append(
            (int(row["start_frame"]), int(row["stop_frame"]))
        )
    for video, spans in by_video.items():
        assert len(spans) == 4
        frames = sorted((dataset / "train").glob(f"*/{video}/frame_*.jpg"))
        assert [f.name for f in frames] == [f"frame_{i:010d}.jpg" for i in range(1, len(frames) + 1)]
        covered = set()
        for (_, stop), (start, _) in itertools.pairwise(spans):
            assert start > stop + 1  # an idle gap
        for start, stop in spans:
            covered |= set(range(start, stop + 1))
        idle = [i for i in range(1, len(frames) + 1) if i not in covered]
        assert idle
        # Idle frames show the background alone: no object-bright pixels.
        frame = cv2.imread(str(frames[idle[0] - 1]))
        assert object_mask(frame).mean() < 0.01


def test_frames_move_as_labelled(dataset):
    """Within a segment the object slides left or right, or grows, or shrinks, as its label says."""
    _, rows = read_rows(dataset / "train_action_classes.csv")
    _, val = read_rows(dataset / "val_action_classes.csv")
    step = 8  # frames apart; the first object of a segment lasts at least 1.3 s (18 frames)
    for split, row in [("train", r) for r in rows] + [("val", r) for r in val]:
        folder = dataset / split / row["participant_id"] / row["video_id"]
        start = int(row["start_frame"])
        masks = [
            object_mask(cv2.imread(str(folder / f"frame_{i:010d}.jpg")))
            for i in (start + 2, start + 2 + step)
        ]
        areas = [m.sum() for m in masks]
        centres = [np.nonzero(m)[1].mean() for m in masks]
        action = row["action_class"].strip()
        shift = (centres[1] - centres[0]) / 48
        growth = areas[1] / areas[0]
        if action == "move right":
            assert shift > 0.05 and 0.7 < growth < 1.4, (row, shift, growth)
        elif action == "move left":
            assert shift < -0.05 and 0.7 < growth < 1.4, (row, shift, growth)
        elif action == "approach":
            assert growth > 1.2, (row, growth)
        else:
            assert action == "recede"
            assert growth < 1 / 1.2, (row, growth)


def _frame_features(frame: np.ndarray) -> np.ndarray:
    """What a single-frame classifier could use: a coarse image, and where/how big the object is."""
    mask = object_mask(frame)
    ys, xs = np.nonzero(mask)
    shape = [mask.mean(), xs.mean() / 32 if len(xs) else 0.5, ys.mean() / 32 if len(ys) else 0.5,
             xs.std() / 32 if len(xs) else 0, ys.std() / 32 if len(ys) else 0]
    coarse = cv2.resize(frame, (6, 6), interpolation=cv2.INTER_AREA).ravel() / 255
    return np.concatenate([shape, coarse]).astype(np.float32)


def _instances(seed: int, count: int, frame_pairs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Features of one frame (or of a frame 8 apart and their difference) per random instance."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for _ in range(count):
        label = int(rng.integers(len(synth.ACTIONS)))
        frames = int(rng.uniform(1.3, 2.5) * synth.DEFAULT_FPS)
        inst = synth.draw_instance(rng, synth.ACTIONS[label], frames, synth.DEFAULT_FPS)
        family = str(rng.choice(synth.SEEN_TEXTURES))
        bg = synth.coloured_texture(rng, family, 32, 32, synth.BACKGROUND_LUMA)
        i = int(rng.integers(0, frames - 8))
        first = _frame_features(synth.composite(bg, inst, i))
        if frame_pairs:
            last = _frame_features(synth.composite(bg, inst, i + 8))
            first = np.concatenate([first, last, last - first])
        feats.append(first)
        labels.append(label)
    return np.stack(feats), np.array(labels)


def _logistic_regression(x, y, x_test, classes: int, steps: int = 1500) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent; predictions on x_test."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = p - onehot
        w -= 0.5 * (x.T @ grad / len(x) + 1e-3 * w)
        b -= 0.5 * grad.mean(0)
    return (x_test @ w + b).argmax(1)


@pytest.mark.parametrize("frame_pairs", [False, True], ids=["one frame", "two frames"])
def test_one_frame_cannot_tell_the_classes_apart(frame_pairs):
    """A classifier on one frame's position, size and coarse look stays at chance (0.25).

    The same classifier given two frames of the clip reads the motion easily: the features carry
    what the model needs, and the single frame is what lacks it.
    """
    x, y = _instances(seed=1, count=700, frame_pairs=frame_pairs)
    x_test, y_test = _instances(seed=2, count=500, frame_pairs=frame_pairs)
    accuracy = (_logistic_regression(x, y, x_test, len(synth.ACTIONS)) == y_test).mean()
    if frame_pairs:
        assert accuracy > 0.8
    else:
        assert accuracy < 0.33  # chance is 0.25; 500 test items give a standard error of 0.02


def test_generation_is_seeded(tmp_path):
    a = synth.generate_dataset(tmp_path / "a", seed=5, videos=1, val_videos=1, segments=2, size=32)
    b = synth.generate_dataset(tmp_path / "b", seed=5, videos=1, val_videos=1, segments=2, size=32)
    c = synth.generate_dataset(tmp_path / "c", seed=6, videos=1, val_videos=1, segments=2, size=32)
    csv_a = (a / "train_action_classes.csv").read_text()
    assert csv_a == (b / "train_action_classes.csv").read_text()
    assert csv_a != (c / "train_action_classes.csv").read_text()
    frame = "train/P01/P01_101/frame_0000000020.jpg"
    assert (a / frame).read_bytes() == (b / frame).read_bytes()


def test_timestamp_format():
    assert synth.timestamp(0) == "00:00:00.00"
    assert synth.timestamp(3723.456) == "01:02:03.46"


def test_sequence_video_matches_its_ground_truth(tmp_path):
    path = tmp_path / "demo.mp4"
    plan = [("move left", 2.0), ("approach", 3.0), ("recede", 2.0)]
    spans = synth.render_sequence_video(path, plan, seed=1, size=48, fps=10, idle_seconds=0.5)
    assert [s.action for s in spans] == [a for a, _ in plan]
    assert [s.stop_frame - s.start_frame + 1 for s in spans] == [20, 30, 20]
    assert spans[0].start_frame == 5 and spans[1].start_frame == spans[0].stop_frame + 6

    truth = json.loads(path.with_suffix(".mp4.json").read_text())
    assert truth["background"] == "unseen"
    assert set(truth["textures"]).isdisjoint(synth.SEEN_TEXTURES)
    assert [(s["label"], s["start_frame"], s["stop_frame"]) for s in truth["segments"]] == [
        (s.action, s.start_frame, s.stop_frame) for s in spans
    ]

    capture = cv2.VideoCapture(str(path))
    frames = []
    while (ok_frame := capture.read())[0]:
        frames.append(ok_frame[1])
    assert len(frames) == truth["frames"] == 5 + 20 + 5 + 30 + 5 + 20 + 5
    assert frames[0].shape == (48, 64, 3)
    # The object is there during actions and gone in the idle gaps (mp4v blurs edges a little).
    assert object_mask(frames[2]).mean() < 0.02
    mid = (spans[1].start_frame + spans[1].stop_frame) // 2
    assert object_mask(frames[mid]).mean() > 0.02


def test_cli_writes_dataset_and_demo_video(tmp_path, capsys):
    out = tmp_path / "DATA"
    demo = tmp_path / "demo.mp4"
    argv = ["--out", str(out), "--videos", "1", "--segments", "2", "--size", "32", "--quiet",
            "--demo-video", str(demo)]
    assert synth.main(argv) == 0
    assert (out / "train_action_classes.csv").is_file()
    assert demo.is_file() and demo.with_suffix(".mp4.json").is_file()
    assert "--data.fps 14" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert synth.main([]) == 2
    assert "nothing to do" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert synth.main(["--out", str(tmp_path / "full"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1
    assert synth.main(["--out", str(tmp_path / "new"), "--size", "4"]) == 2
    assert "size must be at least" in capsys.readouterr().err
