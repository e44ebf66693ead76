"""The synthetic dataset: layout A on disk, motion as labelled, and no class readable off one frame."""

from __future__ import annotations

import csv
import itertools
import json
import re

import cv2
import numpy as np
import pytest
import torch

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
    assert names == {name: i for i, name in enumerate(synth.CLASSES)}
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
        assert [f.name for f in frames] == [
            f"frame_{i:010d}.jpg" for i in range(1, len(frames) + 1)
        ]
        covered = set()
        for (_, stop), (start, _) in itertools.pairwise(spans):
            assert start > stop + 1  # an idle gap
        for start, stop in spans:
            covered |= set(range(start, stop + 1))
        idle = [i for i in range(1, len(frames) + 1) if i not in covered]
        assert idle
        # Nothing moves while idle: the next object waits, still, in its first pose.
        gap = [i for i in idle if i + 1 in idle and i > 1]
        first, second = (cv2.imread(str(frames[i - 1])) for i in (gap[0], gap[0] + 1))
        assert np.array_equal(first, second)


def test_frames_move_as_labelled(dataset):
    """Within a segment the object slides sideways, or grows, or shrinks, or stands still (or
    there is none), as its label says."""
    _, rows = read_rows(dataset / "train_action_classes.csv")
    _, val = read_rows(dataset / "val_action_classes.csv")
    for split, row in [("train", r) for r in rows] + [("val", r) for r in val]:
        folder = dataset / split / row["participant_id"] / row["video_id"]
        # Around the middle of the action, where a path is centred: the object is in view.
        middle = (int(row["start_frame"]) + int(row["stop_frame"])) // 2
        masks = [
            object_mask(cv2.imread(str(folder / f"frame_{i:010d}.jpg")))
            for i in (middle - 4, middle + 4)
        ]
        action = row["action_class"].strip()
        if action == synth.IDLE:
            # Nothing moves: at most one cut from one still scene to another.
            frames = [
                cv2.imread(str(folder / f"frame_{i:010d}.jpg"))
                for i in range(int(row["start_frame"]), int(row["stop_frame"]) + 1)
            ]
            changes = sum(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))
            assert changes <= 1, row
            continue
        areas = [m.sum() for m in masks]
        centres = [np.nonzero(m)[1].mean() for m in masks]
        shift = (centres[1] - centres[0]) / 48
        growth = areas[1] / areas[0]
        if action == "slide":
            assert abs(shift) > 0.1 and 0.8 < growth < 1.25, (row, shift, growth)
        elif action == "approach":
            assert growth > 1.2, (row, growth)
        else:
            assert action == "recede"
            assert growth < 1 / 1.2, (row, growth)


def _frame_features(frame: np.ndarray) -> np.ndarray:
    """What a single-frame classifier could use: a coarse image, and where/how big the object is."""
    mask = object_mask(frame)
    ys, xs = np.nonzero(mask)
    shape = [
        mask.mean(),
        xs.mean() / 32 if len(xs) else 0.5,
        ys.mean() / 32 if len(ys) else 0.5,
        xs.std() / 32 if len(xs) else 0,
        ys.std() / 32 if len(ys) else 0,
    ]
    coarse = cv2.resize(frame, (6, 6), interpolation=cv2.INTER_AREA).ravel() / 255
    return np.concatenate([shape, coarse]).astype(np.float32)


def _instances(seed: int, count: int, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Per random instance, features of what a classifier is shown: ``view`` is

    * "any frame": one frame from anywhere in the action;
    * "first of clip": the first frame of a 1 s clip placed at random in the action, the way
      training samples clips;
    * "two frames": the first and last frames of such a clip (and their difference, signed and
      absolute).
    """
    rng = np.random.default_rng(seed)
    span = round(synth.CLIP_SECONDS * synth.DEFAULT_FPS)
    feats, labels = [], []
    for _ in range(count):
        label = int(rng.integers(len(synth.CLASSES)))
        frames = int(rng.uniform(1.3, 2.5) * synth.DEFAULT_FPS)
        inst = synth.draw_instance(rng, synth.CLASSES[label], frames, synth.DEFAULT_FPS)
        family = str(rng.choice(synth.SEEN_TEXTURES))
        bg = synth.coloured_texture(rng, family, 32, 32, synth.BACKGROUND_LUMA)
        if view == "any frame":
            feat = _frame_features(synth.composite(bg, inst, int(rng.integers(0, frames))))
        else:
            first = int(rng.integers(0, frames - span))
            feat = _frame_features(synth.composite(bg, inst, first))
            if view == "two frames":
                last = _frame_features(synth.composite(bg, inst, first + span))
                # The size of the change as well: idle and slide both keep the object's area,
                # and only how far it moved (either way) tells them apart.
                feat = np.concatenate([feat, last, last - feat, np.abs(last - feat)])
        feats.append(feat)
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


# Accuracy bounds on 600 test items (chance 1/4, standard error about 0.02).
@pytest.mark.parametrize(
    ("view", "low", "high"),
    [("any frame", 0.0, 0.33), ("first of clip", 0.0, 0.50), ("two frames", 0.8, 1.0)],
)
def test_one_frame_cannot_tell_the_classes_apart(view, low, high):
    """A classifier on one frame's object position, size and coarse look.

    Idle instances here always show a (still) object: an empty scene is idle at one glance, by
    design (a quarter of the training idle instances, see synth.EMPTY_IDLE_SHARE), and is not what
    this test is about. Any frame of an action or of a still object: chance. The first frame of a clip: somewhat above chance, and
    necessarily so: an approaching object is, on average, smaller at the start of a clip than
    at its end (docs/demo-model.md explains why any task a model learns this fast has such a
    cue). That is far from the 0.9 the demo model reaches, which needs the change. Two frames
    of the clip read it easily: the features carry what is needed, one frame is what lacks it.
    """
    x, y = _instances(seed=1, count=900, view=view)
    x_test, y_test = _instances(seed=2, count=600, view=view)
    accuracy = (_logistic_regression(x, y, x_test, len(synth.CLASSES)) == y_test).mean()
    assert low <= accuracy <= high, accuracy


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
    plan = [("slide", 2.0), ("approach", 3.0), ("recede", 2.0)]
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
    # Objects move during actions and stand still in the idle gaps (mp4v is lossy: compare the
    # object masks), and the approaching object grows.
    still = [object_mask(f) for f in frames[25:30]]
    assert all((m != still[0]).mean() < 0.01 for m in still)
    areas = [object_mask(frames[i]).sum() for i in (spans[1].start_frame, spans[1].stop_frame)]
    assert areas[1] > 3 * areas[0] > 0
    assert object_mask(frames[-1]).mean() < 0.01  # the video ends on the background alone


def test_cli_writes_dataset_and_demo_video(tmp_path, capsys):
    out = tmp_path / "DATA"
    demo = tmp_path / "demo.mp4"
    argv = [
        "--out",
        str(out),
        "--videos",
        "1",
        "--segments",
        "2",
        "--size",
        "32",
        "--quiet",
        "--demo-video",
        str(demo),
    ]
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


def test_data_module_reads_the_dataset(dataset):
    """The real loader takes the synthetic data as it takes EPIC's: one item per CSV row."""
    from train.data import EpicKitchensDataModule

    data = EpicKitchensDataModule(
        str(dataset),
        num_frames=8,
        image_size=48,
        clip_seconds=synth.CLIP_SECONDS,
        fps=synth.DEFAULT_FPS,
        batch_size=4,
        num_workers=0,
    )
    assert data.class_names == list(synth.CLASSES)
    data.setup("fit")
    assert len(data.train_dataloader().dataset) == 3 * 4
    frames, labels = next(iter(data.val_dataloader()))
    assert frames.shape == (4, 8, 48, 48, 3) and frames.dtype == torch.uint8
    _, rows = read_rows(dataset / "val_action_classes.csv")
    expected = [synth.CLASSES.index(r["action_class"].strip()) for r in rows[:4]]
    assert labels.tolist() == expected
