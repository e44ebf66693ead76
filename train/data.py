"""EPIC-KITCHENS clips for training: three folder layouts, clip sampling and the DataModule.

Layouts of ``data_path`` (``layout="auto"`` tells them apart by the files present):

* ``a``, the original project's: frames ``{train,val}/<participant>/<video_id>/frame_XXXXXXXXXX.jpg``,
  ``{train,val}_action_classes.csv`` (the two have different columns; both carry
  participant_id, video_id, start_frame, stop_frame and action_class) and ``class_names.json``
  (``{"open bag": 0, "take bag": 1}``). ``action_class`` is a class name (leading spaces allowed)
  or an integer id.
* ``b``, the official EPIC-KITCHENS-100 annotations: ``EPIC_100_train.csv``,
  ``EPIC_100_validation.csv``, ``EPIC_100_verb_classes.csv``, ``EPIC_100_noun_classes.csv`` and
  frames ``rgb_frames/<participant>/<video_id>/frame_XXXXXXXXXX.jpg`` (or
  ``<participant>/rgb_frames/<video_id>/``, as the download scripts unpack). The label is the verb, the
  noun or the action (a verb-noun pair seen in training, named "verb noun"). An optional
  ``EPIC_100_video_info.csv`` gives each video's frame rate.
* ``c``, a user's own videos: ``{train,val}/<class name>/*.mp4`` (or avi, mov, mkv, webm), one
  clip source per video; class names are the sorted folder names under ``train``.

A segment is the inclusive range of frames ``start_frame..stop_frame`` (1-based in frame folders,
as EPIC names them). Clips are sampled inside their segment only: a folder may hold several
segments of different classes, and idle frames between them that belong to none.

Clips span ``clip_seconds`` of source time, first to last frame, as epic-stream samples them live:
``num_frames`` frames evenly spaced in time, oldest to newest. Training places the span at random
inside the segment, evaluation centres it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from stream.errors import OptionError
from train.errors import DataError
from train.transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CLASS_MAP = "class_names.json"
EPIC100_CSV = {"train": "EPIC_100_train.csv", "val": "EPIC_100_validation.csv"}
EPIC100_VERBS = "EPIC_100_verb_classes.csv"
EPIC100_NOUNS = "EPIC_100_noun_classes.csv"
EPIC100_VIDEO_INFO = "EPIC_100_video_info.csv"
SEGMENT_COLUMNS = ("participant_id", "video_id", "start_frame", "stop_frame")


class Layout(str, Enum):
    ACTION_CLASSES = "a"  # the original project's frames + {split}_action_classes.csv
    EPIC_100 = "b"  # the official EPIC-KITCHENS-100 annotations
    VIDEOS = "c"  # {split}/<class name>/*.mp4


class Sampling(str, Enum):
    SPAN = "span"  # T frames evenly over clip_seconds, as streamed live
    SEGMENT = "segment"  # the original's: T equal parts of the segment, one frame from each


class Label(str, Enum):
    ACTION = "action"
    VERB = "verb"
    NOUN = "noun"


def frame_name(number: int) -> str:
    """EPIC's frame file name for 1-based frame ``number``."""
    return f"frame_{number:010d}.jpg"


@dataclass(frozen=True)
class Segment:
    """A labelled stretch of one source, frames ``start..stop`` inclusive.

    ``source`` is a frame folder (frame numbers 1-based, files named by :func:`frame_name`) or,
    when ``is_video``, a video file (frame indices 0-based). ``origin`` says where the segment was
    declared (``file:line`` of its CSV row, or the video's path) for error messages.
    """

    source: Path
    start: int
    stop: int
    fps: float
    class_name: str
    origin: str
    is_video: bool = False


# --- sampling ---------------------------------------------------------------------------------


def clip_indices(
    start: int,
    stop: int,
    num_frames: int,
    span_frames: float,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices of a clip of ``num_frames`` spanning ``span_frames`` frames, first to last.

    The frames are evenly spaced, oldest first and the newest last, like epic-stream's live clips
    (``span_frames = clip_seconds * fps``). With ``rng`` the span is placed uniformly at random
    inside ``start..stop`` (inclusive); without it, it is centred. A segment shorter than the
    span gets the centred span with indices clamped to the segment, so edge frames repeat.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if stop < start:
        raise ValueError(f"empty segment {start}..{stop}")
    if span_frames < 0:
        raise ValueError(f"span_frames must not be negative, got {span_frames}")
    if num_frames == 1:
        span_frames = 0.0  # one frame spans no time: the newest frame, centred like any clip
    offsets = np.linspace(0.0, span_frames, num_frames)
    # floor(x + 0.5), not np.round: halves always go the same way, no banker's rounding.
    steps = np.floor(offsets + 0.5).astype(np.int64)
    room = (stop - start) - span_frames  # how far the first frame can move
    if rng is not None and room >= 1:
        first = start + int(rng.integers(0, math.floor(room) + 1))
    else:
        first = start + math.floor(room / 2 + 0.5)
    # An integer first frame keeps the steps between frames the same wherever the clip sits.
    return np.clip(first + steps, start, stop)


def segment_indices(
    start: int, stop: int, num_frames: int, *, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The original's sampling: split ``start..stop`` into ``num_frames`` equal parts, one frame
    from each; a random frame of each part with ``rng``, the middle one without."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if stop < start:
        raise ValueError(f"empty segment {start}..{stop}")
    part = (stop - start + 1) / num_frames
    within = rng.uniform(0.0, 1.0, num_frames) if rng is not None else np.full(num_frames, 0.5)
    indices = start + np.floor((np.arange(num_frames) + within) * part).astype(np.int64)
    return np.clip(indices, start, stop)


# --- reading frames ---------------------------------------------------------------------------


def read_image(path: Path, origin: str) -> np.ndarray:
    """One frame as uint8 BGR, or a DataError naming the file and the row that asked for it."""
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        problem = (
            "is missing" if not path.exists() else "cannot be decoded (corrupt or not an image)"
        )
        raise DataError(f"{origin}: frame {path} {problem}")
    return frame


def read_video_frames(path: Path, indices: Sequence[int]) -> list[np.ndarray]:
    """Frames ``indices`` (0-based, non-decreasing) of a video, decoded in one forward pass.

    Seeks to the first index, then grabs forward and decodes only the frames asked for. Frame
    counts are estimates in some containers: asking past the real end repeats the last frame.
    """
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DataError(f"{path}: cannot open the video")
        wanted = sorted(set(int(i) for i in indices))
        position = 0
        if wanted[0] > 0 and capture.set(cv2.CAP_PROP_POS_FRAMES, wanted[0]):
            position = wanted[0]
        decoded: dict[int, np.ndarray] = {}
        last: np.ndarray | None = None
        for index in wanted:
            while position < index and capture.grab():
                position += 1
            if position < index:
                break  # the stream ended early
            ok, frame = capture.read()
            if not ok:
                break
            position += 1
            decoded[index] = last = frame
    finally:
        capture.release()
    if last is None:
        raise DataError(f"{path}: cannot decode frame {wanted[0]} of the video")
    frames, previous = [], last  # wanted[0] is always decoded, so `previous` is set first
    for index in indices:
        previous = decoded.get(int(index), previous)
        frames.append(previous)
    return frames


def read_segment_frames(segment: Segment, indices: Sequence[int]) -> list[np.ndarray]:
    if segment.is_video:
        return read_video_frames(segment.source, indices)
    return [read_image(segment.source / frame_name(int(i)), segment.origin) for i in indices]


# --- annotations ------------------------------------------------------------------------------


def read_csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV as (``"file:line"``, row); a DataError if a required column is missing."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)} (it has: {', '.join(columns) or 'none'})"
            )
        reader.fieldnames = columns
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _int_field(row: dict[str, str], column: str, origin: str) -> int:
    value = (row.get(column) or "").strip()
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{origin}: {column}={value!r} is not an integer") from None


def _frame_range(row: dict[str, str], origin: str) -> tuple[int, int]:
    start, stop = _int_field(row, "start_frame", origin), _int_field(row, "stop_frame", origin)
    if start < 1 or stop < start:
        raise DataError(
            f"{origin}: start_frame={start}, stop_frame={stop} is not a range of 1-based frames"
        )
    return start, stop


def read_class_map(path: Path) -> list[str]:
    """class_names.json, ``{"name": id, ...}`` with ids 0..C-1, as the list of names by id."""
    if not path.is_file():
        raise DataError(f"class map not found: {path}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(
            f'{path}: must be a non-empty JSON mapping of class name to id, like {{"open bag": 0}}; '
            f"got a {type(mapping).__name__}"
        )
    by_id: dict[int, str] = {}
    for name, index in mapping.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise DataError(f"{path}: the id of {name!r} must be an integer, got {index!r}")
        if index in by_id:
            raise DataError(f"{path}: {by_id[index]!r} and {name!r} share id {index}")
        by_id[index] = name.strip()
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: class ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
    return [by_id[i] for i in range(len(by_id))]


def _known(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def action_class_segments(
    root: Path, split: str, class_names: Sequence[str], fps: float
) -> list[Segment]:
    """Layout a: the segments of ``{split}_action_classes.csv``, frames under ``root/split``."""
    path = root / f"{split}_action_classes.csv"
    by_name = {name: name for name in class_names}
    segments = []
    for origin, row in read_csv_rows(path, (*SEGMENT_COLUMNS, "action_class")):
        start, stop = _frame_range(row, origin)
        raw = (row.get("action_class") or "").strip()
        if raw.lstrip("-").isdigit():
            index = int(raw)
            if not 0 <= index < len(class_names):
                raise DataError(
                    f"{origin}: action_class {index} is not an id in {root / CLASS_MAP} "
                    f"(ids 0..{len(class_names) - 1})"
                )
            name = class_names[index]
        elif raw in by_name:
            name = raw
        else:
            raise DataError(
                f"{origin}: action_class {raw!r} is not in {root / CLASS_MAP} "
                f"(it has {_known(class_names)})"
            )
        folder = root / split / row["participant_id"].strip() / row["video_id"].strip()
        segments.append(Segment(folder, start, stop, fps, name, origin))
    return segments


@dataclass(frozen=True)
class Epic100Classes:
    """The EPIC-KITCHENS-100 verb and noun vocabularies (id -> key) and per-video frame rates."""

    verbs: dict[int, str]
    nouns: dict[int, str]
    video_fps: dict[str, float]

    @classmethod
    def read(cls, root: Path) -> Epic100Classes:
        video_fps = {}
        info = root / EPIC100_VIDEO_INFO
        if info.is_file():
            for origin, row in read_csv_rows(info, ("video_id", "fps")):
                try:
                    video_fps[row["video_id"].strip()] = float(row["fps"])
                except ValueError:
                    raise DataError(f"{origin}: fps={row['fps']!r} is not a number") from None
        return cls(
            _read_vocabulary(root / EPIC100_VERBS),
            _read_vocabulary(root / EPIC100_NOUNS),
            video_fps,
        )

    def name(self, row: dict[str, str], label: Label, origin: str) -> str:
        verb, noun = _int_field(row, "verb_class", origin), _int_field(row, "noun_class", origin)
        if verb not in self.verbs:
            raise DataError(f"{origin}: verb_class {verb} is not in {EPIC100_VERBS}")
        if noun not in self.nouns:
            raise DataError(f"{origin}: noun_class {noun} is not in {EPIC100_NOUNS}")
        if label is Label.VERB:
            return self.verbs[verb]
        if label is Label.NOUN:
            return self.nouns[noun]
        return f"{self.verbs[verb]} {self.nouns[noun]}"

    def class_names(self, label: Label) -> list[str]:
        vocabulary = self.verbs if label is Label.VERB else self.nouns
        return [vocabulary[i] for i in sorted(vocabulary)]


def _read_vocabulary(path: Path) -> dict[int, str]:
    vocabulary = {}
    for origin, row in read_csv_rows(path, ("id", "key")):
        vocabulary[_int_field(row, "id", origin)] = row["key"].strip()
    if not vocabulary:
        raise DataError(f"{path}: no classes")
    return vocabulary


def epic100_segments(
    root: Path, split: str, classes: Epic100Classes, label: Label, fps: float
) -> list[Segment]:
    """Layout b: the segments of EPIC_100_train.csv or EPIC_100_validation.csv."""
    path = root / EPIC100_CSV[split]
    segments = []
    for origin, row in read_csv_rows(path, (*SEGMENT_COLUMNS, "verb_class", "noun_class")):
        start, stop = _frame_range(row, origin)
        participant, video = row["participant_id"].strip(), row["video_id"].strip()
        folder = root / "rgb_frames" / participant / video
        if not folder.is_dir() and (root / participant / "rgb_frames" / video).is_dir():
            # The official download scripts unpack to <participant>/rgb_frames/<video_id>.
            folder = root / participant / "rgb_frames" / video
        name = classes.name(row, label, origin)
        segments.append(
            Segment(folder, start, stop, classes.video_fps.get(video, fps), name, origin)
        )
    return segments


def action_pairs(segments: Sequence[Segment]) -> list[str]:
    """Distinct action names in order of first appearance; the caller sorts them as it likes."""
    return list(dict.fromkeys(s.class_name for s in segments))


def class_folders(split_dir: Path) -> list[str]:
    """Layout c: the class names, sorted folder names under ``split_dir``."""
    if not split_dir.is_dir():
        raise DataError(f"folder not found: {split_dir} (expected {split_dir}/<class name>/*.mp4)")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def probe_video(path: Path, fallback_fps: float) -> tuple[int, float]:
    """(frame count, fps) of a video; counts by decoding when the container does not say."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DataError(f"{path}: cannot open the video (corrupt, or a codec OpenCV lacks)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        if count <= 0:
            count = 0
            while capture.grab():
                count += 1
    finally:
        capture.release()
    if count <= 0:
        raise DataError(f"{path}: the video has no frames")
    if not (fps > 0 and math.isfinite(fps)):
        fps = fallback_fps
    return count, fps


def video_segments(root: Path, split: str, fps: float) -> list[Segment]:
    """Layout c: one segment per video under ``root/split/<class name>/``, probed for length."""
    segments = []
    for name in class_folders(root / split):
        for path in sorted((root / split / name).iterdir()):
            if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                count, video_fps = probe_video(path, fps)
                segments.append(
                    Segment(path, 0, count - 1, video_fps, name, str(path), is_video=True)
                )
    return segments


def check_frames(segments: Sequence[Segment]) -> None:
    """Fail before training if a frame segment's folder or its first or last frame is missing.

    One DataError names the first bad row and counts the others, so a user fixes them in one go.
    """
    problems = []
    for seg in segments:
        if seg.is_video:
            continue
        if not seg.source.is_dir():
            problems.append(f"{seg.origin}: frame folder {seg.source} is missing")
            continue
        for number in (seg.start, seg.stop):
            if not (seg.source / frame_name(number)).is_file():
                problems.append(f"{seg.origin}: frame {seg.source / frame_name(number)} is missing")
                break
    if problems:
        more = (
            f" (and {len(problems) - 1} more rows with missing frames)" if len(problems) > 1 else ""
        )
        raise DataError(problems[0] + more)


def detect_layout(root: Path) -> Layout:
    """Which layout ``root`` holds, from the files present."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    found = []
    if (root / EPIC100_CSV["train"]).is_file():
        found.append(Layout.EPIC_100)
    if (root / "train_action_classes.csv").is_file() or (root / CLASS_MAP).is_file():
        found.append(Layout.ACTION_CLASSES)
    if not found and (root / "train").is_dir():
        videos = (p for d in (root / "train").iterdir() if d.is_dir() for p in d.iterdir())
        if any(p.suffix.lower() in VIDEO_SUFFIXES for p in videos):
            found.append(Layout.VIDEOS)
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(
            f"{root} matches several layouts ({', '.join(f.value for f in found)}); choose one "
            "with --data.layout"
        )
    raise DataError(
        f"{root} holds no known dataset layout; expected one of: "
        f"(a) {CLASS_MAP}, train_action_classes.csv, val_action_classes.csv and train/, val/ "
        "frame folders; "
        f"(b) {EPIC100_CSV['train']}, {EPIC100_CSV['val']}, {EPIC100_VERBS}, {EPIC100_NOUNS} and "
        "rgb_frames/; "
        "(c) train/<class name>/*.mp4 and val/<class name>/*.mp4"
    )


# --- dataset ----------------------------------------------------------------------------------


class ClipDataset(Dataset):
    """Clips of labelled segments: ``(frames uint8 BGR [T, S, S, 3], label)`` per item.

    With ``train`` the clip position and the transform's random choices are drawn per item from
    torch's generator, which DataLoader seeds per worker and epoch (and seed_everything seeds in
    the main process); without it, every item is the same on every call.
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        class_names: Sequence[str],
        num_frames: int,
        clip_seconds: float,
        sampling: Sampling,
        transform: EvalTransform | TrainTransform,
        train: bool,
    ):
        index = {name: i for i, name in enumerate(class_names)}
        self.segments = list(segments)
        self.labels = [index[s.class_name] for s in self.segments]
        self.num_frames = num_frames
        self.clip_seconds = clip_seconds
        self.sampling = sampling
        self.transform = transform
        self.train = train

    def __len__(self) -> int:
        return len(self.segments)

    def indices(self, item: int, rng: np.random.Generator | None) -> np.ndarray:
        seg = self.segments[item]
        if self.sampling is Sampling.SEGMENT:
            return segment_indices(seg.start, seg.stop, self.num_frames, rng=rng)
        return clip_indices(
            seg.start, seg.stop, self.num_frames, self.clip_seconds * seg.fps, rng=rng
        )

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item())) if self.train else None
        frames = read_segment_frames(self.segments[item], self.indices(item, rng))
        clip = self.transform(frames, rng)
        return torch.from_numpy(clip), self.labels[item]


def _single_cv2_thread(worker_id: int) -> None:
    # Each loader worker is one process; OpenCV's own thread pool per worker would oversubscribe.
    cv2.setNumThreads(1)


# --- the DataModule ---------------------------------------------------------------------------


def _choice(enum: type[Enum], value: str, option: str, aliases: dict[str, str] | None = None):
    key = str(value).strip().lower()
    key = (aliases or {}).get(key, key)
    try:
        return enum(key)
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise OptionError(f"{option} must be one of {choices}; got {value!r}") from None


class EpicKitchensDataModule(pl.LightningDataModule):
    """EPIC-KITCHENS (or own-video) clips for fit, validate, test and predict.

    Batches are ``(frames, labels)``: frames uint8 BGR [B, T, S, S, 3], the ONNX contract's input,
    labels int64 [B]. The class names are read in the constructor so that the CLI can hand
    ``num_classes`` and ``class_names`` to the model before anything else runs.

    Test uses the ``test`` split when the data has one (layout a: test_action_classes.csv; layout
    c: test/), else the validation split; predict uses the validation split.
    """

    def __init__(
        self,
        data_path: str,
        layout: str = "auto",
        num_frames: int = 8,
        image_size: int = 224,
        clip_seconds: float = 2.0,
        fps: float = 60.0,
        sampling: str = "span",
        label: str = "action",
        subset: list[str] | None = None,
        batch_size: int = 1,
        num_workers: int = 2,
        scale_jitter: tuple[float, float] = (1.0, 1.15),
        flip: bool = False,
        color_jitter: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        for option, value, least in (
            ("num_frames", num_frames, 1),
            ("image_size", image_size, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < least:
                raise OptionError(f"data.{option} must be at least {least}, got {value}")
        if not clip_seconds > 0:
            raise OptionError(f"data.clip_seconds must be positive, got {clip_seconds}")
        if not fps > 0:
            raise OptionError(f"data.fps must be positive, got {fps}")
        self.root = Path(data_path).expanduser()
        self.layout = (
            detect_layout(self.root)
            if str(layout).strip().lower() == "auto"
            else _choice(Layout, layout, "data.layout")
        )
        self.num_frames, self.image_size = num_frames, image_size
        self.clip_seconds, self.fps = float(clip_seconds), float(fps)
        self.sampling = _choice(Sampling, sampling, "data.sampling")
        self.label = _choice(
            Label, label, "data.label", {"verb_class": "verb", "noun_class": "noun"}
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        # Built first, so bad augmentation options fail here and not in the first epoch.
        self.train_transform = TrainTransform(image_size, tuple(scale_jitter), flip, color_jitter)
        self.eval_transform = EvalTransform(image_size)
        self._segments: dict[str, list[Segment]] = {}
        self._epic100: Epic100Classes | None = None
        self._class_names = self._apply_subset(self._read_class_names(), subset)
        self.datasets: dict[str, ClipDataset] = {}

    # class names -------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def _read_class_names(self) -> list[str]:
        if self.layout is Layout.ACTION_CLASSES:
            return read_class_map(self.root / CLASS_MAP)
        if self.layout is Layout.VIDEOS:
            names = class_folders(self.root / "train")
            if not names:
                raise DataError(
                    f"{self.root / 'train'} has no class folders (expected <class name>/*.mp4)"
                )
            return names
        self._epic100 = Epic100Classes.read(self.root)
        if self.label is not Label.ACTION:
            return self._epic100.class_names(self.label)
        # Actions are the verb-noun pairs that training has, in verb then noun id order.
        verbs, nouns = self._epic100.verbs, self._epic100.nouns
        rank = {f"{verbs[v]} {nouns[n]}": (v, n) for v in verbs for n in nouns}
        return sorted(action_pairs(self._raw_segments("train")), key=rank.__getitem__)

    def _apply_subset(self, names: list[str], subset: Sequence[str] | None) -> list[str]:
        if not subset:
            return names
        wanted = list(dict.fromkeys(s.strip() for s in subset))
        unknown = [s for s in wanted if s not in set(names)]
        if unknown:
            where = {
                Layout.ACTION_CLASSES: str(self.root / CLASS_MAP),
                Layout.EPIC_100: f"the {self.label.value} classes of {self.root}",
                Layout.VIDEOS: f"the class folders of {self.root / 'train'}",
            }[self.layout]
            raise OptionError(
                f"data.subset names {_known(unknown)}, not in {where} (it has {_known(names)})"
            )
        return wanted

    # segments ----------------------------------------------------------------------------------

    def has_split(self, split: str) -> bool:
        if self.layout is Layout.ACTION_CLASSES:
            return (self.root / f"{split}_action_classes.csv").is_file()
        if self.layout is Layout.EPIC_100:
            return split in EPIC100_CSV
        return (self.root / split).is_dir()

    def _raw_segments(self, split: str) -> list[Segment]:
        """All segments a split declares, parsed once; not yet filtered to the class list."""
        if split not in self._segments:
            if self.layout is Layout.ACTION_CLASSES:
                full = read_class_map(self.root / CLASS_MAP)
                segments = action_class_segments(self.root, split, full, self.fps)
            elif self.layout is Layout.EPIC_100:
                assert self._epic100 is not None
                segments = epic100_segments(self.root, split, self._epic100, self.label, self.fps)
            else:
                segments = video_segments(self.root, split, self.fps)
            self._segments[split] = segments
        return self._segments[split]

    def segments(self, split: str) -> list[Segment]:
        """The checked segments of a split whose class is in :attr:`class_names`."""
        raw = self._raw_segments(split)
        self._check_split_classes(split, raw)
        keep = set(self._class_names)
        segments = [s for s in raw if s.class_name in keep]
        if not segments:
            raise DataError(self._empty_split_message(split, raw))
        check_frames(segments)
        return segments

    def _check_split_classes(self, split: str, raw: Sequence[Segment]) -> None:
        """What a split's classes must agree with, beyond the class list itself."""
        have = {s.class_name for s in raw}
        if self.layout is Layout.VIDEOS and split == "train":
            empty = [n for n in self._class_names if n not in have]
            if empty:
                raise DataError(f"{self.root / 'train' / empty[0]}: the class folder has no videos")
        elif self.layout is Layout.VIDEOS:
            unknown = sorted(have - set(class_folders(self.root / "train")))
            if unknown:
                raise DataError(
                    f"{self.root / split / unknown[0]}: class {unknown[0]!r} has no folder in "
                    f"{self.root / 'train'}"
                )
        elif self.layout is Layout.EPIC_100 and self.label is Label.ACTION and split != "train":
            trained = {s.class_name for s in self._raw_segments("train")}
            unseen = sum(s.class_name not in trained for s in raw)
            if unseen:
                log.warning(
                    "%d %s rows have actions that training never has; they are left out",
                    unseen,
                    split,
                )

    def _empty_split_message(self, split: str, raw: Sequence[Segment]) -> str:
        source = {
            Layout.ACTION_CLASSES: self.root / f"{split}_action_classes.csv",
            Layout.EPIC_100: self.root / EPIC100_CSV.get(split, split),
            Layout.VIDEOS: self.root / split,
        }[self.layout]
        if raw:
            return (
                f"{source}: the {split} split is empty: none of its {len(raw)} segments has a "
                f"class in {_known(self._class_names)}"
            )
        what = "videos" if self.layout is Layout.VIDEOS else "rows"
        return f"{source}: the {split} split is empty (no {what})"

    # Lightning hooks ---------------------------------------------------------------------------

    def _dataset(self, split: str, train: bool) -> ClipDataset:
        key = f"{split}:{'train' if train else 'eval'}"
        if key not in self.datasets:
            self.datasets[key] = ClipDataset(
                self.segments(split),
                self._class_names,
                self.num_frames,
                self.clip_seconds,
                self.sampling,
                self.train_transform if train else self.eval_transform,
                train,
            )
        return self.datasets[key]

    def _test_split(self) -> str:
        return "test" if self.has_split("test") else "val"

    def setup(self, stage: str | None = None) -> None:
        # Every check that can fail runs here, before the first step.
        if stage in (None, "fit"):
            self._dataset("train", train=True)
        if stage in (None, "fit", "validate", "predict"):
            self._dataset("val", train=False)
        if stage in (None, "test"):
            self._dataset(self._test_split(), train=False)

    def _loader(self, dataset: ClipDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_single_cv2_thread if self.num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            # Shuffling and worker seeds follow `seed`, so two runs see the same clips in order.
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("train", train=True), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val", train=False), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self._test_split(), train=False), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
