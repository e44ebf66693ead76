"""Every data mistake a user can make ends in one DataError line naming the file or CSV row."""

from __future__ import annotations

import csv
import json

import pytest
from data_miniature import (
    TRAIN_COLUMNS_A,
    VAL_COLUMNS_A,
    write_csv,
    write_layout_a,
    write_layout_b,
    write_layout_c,
)

from stream.errors import EpicError, OptionError
from train.data import EpicKitchensDataModule, frame_name
from train.errors import DataError

SMALL = {"num_frames": 4, "image_size": 16, "clip_seconds": 1.0, "fps": 10.0, "num_workers": 0}


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _edit_row(path, index, **changes):
    rows = _rows(path)
    rows[index].update(changes)
    columns = list(rows[0])
    write_csv(path, columns, rows)


def _setup_error(root, stage="fit", **kwargs) -> str:
    dm = EpicKitchensDataModule(str(root), **{**SMALL, **kwargs})
    with pytest.raises(DataError) as info:
        dm.setup(stage)
    return str(info.value)


def test_data_error_is_a_user_error():
    assert issubclass(DataError, EpicError)


def test_a_row_whose_frame_folder_is_missing_names_the_row_and_folder(tmp_path):
    root = write_layout_a(tmp_path)
    _edit_row(root / "train_action_classes.csv", 1, video_id="P01_99")
    message = _setup_error(root)
    assert f"{root / 'train_action_classes.csv'}:3" in message
    assert str(root / "train" / "P01" / "P01_99") in message
    assert "\n" not in message


def test_a_row_past_the_last_frame_names_the_missing_frame(tmp_path):
    root = write_layout_a(tmp_path)
    _edit_row(root / "val_action_classes.csv", 0, stop_frame="45")  # P03_01 has frames 1..40
    _edit_row(root / "val_action_classes.csv", 1, start_frame="41", stop_frame="50")
    message = _setup_error(root, stage="validate")
    assert f"{root / 'val_action_classes.csv'}:2" in message
    assert str(root / "val/P03/P03_01" / frame_name(45)) in message
    assert "and 1 more" in message  # all bad rows counted, fixed in one go


def test_a_frame_missing_inside_a_segment_is_named_when_read(tmp_path):
    root = write_layout_a(tmp_path)
    missing = root / "val/P03/P03_01" / frame_name(5)
    missing.unlink()
    dm = EpicKitchensDataModule(str(root), **SMALL)
    dm.setup("validate")  # first and last frames exist: only reading finds the gap
    with pytest.raises(DataError) as info:
        dm.datasets["val:eval"][0]
    assert str(missing) in str(info.value) and "missing" in str(info.value)
    assert f"{root / 'val_action_classes.csv'}:2" in str(info.value)


def test_a_corrupt_jpeg_is_named_with_its_row(tmp_path):
    root = write_layout_a(tmp_path)
    corrupt = root / "val/P03/P03_01" / frame_name(5)
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    dm = EpicKitchensDataModule(str(root), **SMALL)
    dm.setup("validate")
    with pytest.raises(DataError) as info:
        dm.datasets["val:eval"][0]
    assert str(corrupt) in str(info.value) and "cannot be decoded" in str(info.value)
    assert f"{root / 'val_action_classes.csv'}:2" in str(info.value)


def test_a_corrupt_jpeg_read_in_a_loader_worker_still_gives_one_line(tmp_path):
    root = write_layout_a(tmp_path)
    corrupt = root / "val/P03/P03_01" / frame_name(5)
    corrupt.write_bytes(b"garbage")
    dm = EpicKitchensDataModule(str(root), **{**SMALL, "num_workers": 1})
    dm.setup("validate")
    batches = iter(dm.val_dataloader())
    try:
        with pytest.raises(DataError) as info:
            next(batches)
        message = str(info.value)
    finally:
        # Left to the garbage collector, an errored worker takes seconds to be reaped.
        batches._shutdown_workers()
    assert "\n" not in message and "worker" not in message
    assert message.startswith(f"{root / 'val_action_classes.csv'}:2: frame {corrupt}")


@pytest.mark.parametrize("value", ["close bag", "7"])
def test_a_class_not_in_class_names_json_names_the_row(tmp_path, value):
    root = write_layout_a(tmp_path)
    _edit_row(root / "train_action_classes.csv", 2, action_class=value)
    message = _setup_error(root)
    assert f"{root / 'train_action_classes.csv'}:4" in message
    assert value in message and "class_names.json" in message


def test_an_empty_split_names_the_file(tmp_path):
    root = write_layout_a(tmp_path)
    write_csv(root / "val_action_classes.csv", VAL_COLUMNS_A, [])
    message = _setup_error(root)
    assert str(root / "val_action_classes.csv") in message and "empty" in message


def test_a_split_emptied_by_the_subset_says_so(tmp_path):
    root = write_layout_b(tmp_path)
    message = _setup_error(root, label="verb", subset=["put"])  # validation has no "put"
    assert str(root / "EPIC_100_validation.csv") in message
    assert "empty" in message and "'put'" in message


def test_an_empty_video_split_names_the_folder(tmp_path):
    root = write_layout_c(tmp_path)
    for video in (root / "val").rglob("*.mp4"):
        video.unlink()
    message = _setup_error(root)
    assert str(root / "val") in message and "empty" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (json.dumps(["open bag", "take bag"]), "mapping"),
        ("{not json", "not valid JSON"),
        (json.dumps({"open bag": 0, "take bag": 2}), "0..1"),
        (json.dumps({"open bag": "zero"}), "integer"),
    ],
)
def test_a_bad_class_names_json_fails_at_construction(tmp_path, content, expected):
    root = write_layout_a(tmp_path)
    (root / "class_names.json").write_text(content)
    with pytest.raises(DataError) as info:
        EpicKitchensDataModule(str(root), **SMALL)
    assert str(root / "class_names.json") in str(info.value) and expected in str(info.value)


def test_missing_csv_columns_are_named(tmp_path):
    root = write_layout_a(tmp_path)
    columns = [c for c in TRAIN_COLUMNS_A if c not in ("stop_frame", "action_class")]
    write_csv(root / "train_action_classes.csv", columns, [{"start_frame": 1}])
    message = _setup_error(root)
    assert str(root / "train_action_classes.csv") in message
    assert "stop_frame" in message and "action_class" in message


def test_a_non_integer_frame_number_names_the_row(tmp_path):
    root = write_layout_a(tmp_path)
    _edit_row(root / "train_action_classes.csv", 0, start_frame="five")
    message = _setup_error(root)
    assert f"{root / 'train_action_classes.csv'}:2" in message and "'five'" in message


def test_an_epic100_class_outside_the_vocabulary_names_the_row(tmp_path):
    root = write_layout_b(tmp_path)
    _edit_row(root / "EPIC_100_validation.csv", 2, verb_class="42")
    message = _setup_error(root, label="verb")
    assert f"{root / 'EPIC_100_validation.csv'}:4" in message and "42" in message


def test_a_corrupt_video_is_named(tmp_path):
    root = write_layout_c(tmp_path)
    bad = root / "train/left/broken.mp4"
    bad.write_bytes(b"\x00\x01 random bytes, not a video" * 10)
    message = _setup_error(root)
    assert str(bad) in message


def test_a_validation_class_without_a_training_folder_is_named(tmp_path):
    root = write_layout_c(tmp_path)
    (root / "val/right").rename(root / "val/up")
    message = _setup_error(root, stage="validate")
    assert str(root / "val/up") in message and str(root / "train") in message


def test_an_unknown_layout_says_which_files_were_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        EpicKitchensDataModule(str(tmp_path), **SMALL)
    message = str(info.value)
    for expected in (
        "class_names.json",
        "train_action_classes.csv",
        "EPIC_100_train.csv",
        "train/<class name>/*.mp4",
    ):
        assert expected in message


def test_a_missing_data_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        EpicKitchensDataModule(str(tmp_path / "nowhere"), **SMALL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layout": "z"},
        {"sampling": "random"},
        {"label": "verbs"},
        {"num_frames": 0},
        {"clip_seconds": 0.0},
        {"scale_jitter": (0.5, 1.0)},
    ],
)
def test_impossible_options_are_option_errors(tmp_path, kwargs):
    root = write_layout_a(tmp_path)
    with pytest.raises(OptionError):
        EpicKitchensDataModule(str(root), **{**SMALL, **kwargs})
