"""A synthetic action dataset in EPIC-KITCHENS layout A, and a demo video with known ground truth.

No dataset can be downloaded where this project is built and tested, so the demo model learns a
task drawn here. Its classes are motions of a textured object over a textured background:

* ``slide``: the object slides sideways (to the left or to the right);
* ``approach`` / ``recede``: the object grows or shrinks, as if it came closer or went away;
* ``idle``: nothing moves: the object stands still, or the background is empty, or one still
  scene cuts to another (an object replaced by another, or appearing, or gone). The demo video's
  stretches between actions look like this, so the model can say that nothing happens instead
  of naming an action.

A single frame cannot tell these apart. Every property a frame shows is drawn independently of
the class from the same distribution: the background, the object's shape, texture, colours and
rotation, where it is and how big it is. Positions and sizes are matched per frame, not only at the
start: a sliding object's path is centred on a random point, and a zooming object sits at a random
point of such a path; a sliding object keeps a size drawn from the same log-uniform range that a
zooming one sweeps through. Only the change between frames says which action it is.

What makes it learnable quickly, and why left and right are one class (docs/demo-model.md): the
object is large (a third of the frame or more) and always brighter than the background, so "how
much of the frame is object" is a linear function of the pixels and its trend over the clip tells
approach from recede within ~150 steps; a sliding object keeps that amount constant while its
pixels change. Telling left from right needs the product of where and when, which a small
TimeSformer from scratch finds only after 250 to 600+ steps depending on the seed. Frames are
written at the model's resolution, so decoding them costs almost nothing.

Everything is drawn in units of the frame's short side, so a video rendered at 240 pixels and
shrunk by :func:`stream.preprocess.resize_and_crop` looks like one rendered at the model's size.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from stream.errors import EpicError, OptionError, OutputError

ACTIONS: tuple[str, ...] = ("slide", "approach", "recede")
IDLE = "idle"
# The model's classes: the actions, and "nothing happens". Idle is a class rather than a score
# threshold because a still scene is as certain an answer as a motion; a threshold on an
# action model's confidence only says "unsure", and the demo's idle stretches are not unsure.
CLASSES: tuple[str, ...] = (*ACTIONS, IDLE)
# The share of training idle instances with no object at all: the demo video ends on the empty
# background, which a model that only ever saw an object would have to guess about.
EMPTY_IDLE_SHARE = 0.25
# The share in which one still object gives way to another (or to none, or appears from none) at
# a random frame: between a video's actions, the next object takes the last one's place with no
# motion, and a clip that spans that cut shows nothing happen but the cut.
CUT_IDLE_SHARE = 0.35

# Texture families. Training and validation videos use the first set; the demo video's background
# uses the second, which no training video has, so the demo shows the model generalising past the
# backgrounds it was trained on.
SEEN_TEXTURES: tuple[str, ...] = ("noise", "stripes", "checker", "dots")
UNSEEN_TEXTURES: tuple[str, ...] = ("cells", "rings", "plaid")
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond", "hexagon", "star")

# Motion, in units of the frame's short side and per second of video. Each second a sliding
# object travels 0.35-0.6 of the frame and a zooming one changes its size by a factor 1.4-2.3;
# over a clip of CLIP_SECONDS, half that: a pixel or two per frame at 64 pixels, less than a
# 16-pixel patch.
SPEED_RANGE = (0.35, 0.60)  # short sides per second, sideways
ZOOM_RANGE = (math.log(1.4), math.log(2.3))  # log size change per second
# A long action slows down to stay in view: at most this far, or this much bigger or smaller.
MAX_TRAVEL = 1.3  # short sides
MAX_SWING = math.log(9.0)
DEMO_RADII = (0.14, 0.5)  # a demo object's radius at the start and end of approach / recede
RADIUS_RANGE = (0.16, 0.34)  # object radius, short sides, log-uniform (middle of its instance)
CLIP_SECONDS = 0.5  # configs/demo.yaml's clip_seconds
# The object is always brighter than the background (luma ranges that do not overlap), as a
# lit object in front of a duller scene. It says where the object is in every frame, for every
# class alike, so it gives nothing away about the action; but it makes "where is the object" a
# linear function of the pixels, which a small transformer picks up in a few steps.
BACKGROUND_LUMA = (0.08, 0.40)
OBJECT_LUMA = (0.55, 0.95)


# ----------------------------------------------------------------------------------------------
# Textures: float32 [h, w] in [0, 1], drawn in units of the short side so any size looks alike.


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = float(min(h, w))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x / s, y / s


def _rotated(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def texture(rng: np.random.Generator, family: str, h: int, w: int) -> np.ndarray:
    """A random texture of ``family`` as float32 [h, w] in [0, 1]."""
    x, y = _grid(h, w)
    angle = rng.uniform(0, math.pi)
    if family == "noise":
        # Smooth value noise: a coarse random grid, upsampled with cubic interpolation.
        cells = rng.uniform(3.0, 8.0)
        gh, gw = max(2, round(cells * h / min(h, w))), max(2, round(cells * w / min(h, w)))
        t = cv2.resize(
            rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        )
    elif family == "stripes":
        u, _ = _rotated(x, y, angle)
        t = 0.5 + 0.5 * np.sin(
            2 * math.pi * rng.uniform(2.5, 7.0) * u + rng.uniform(0, 2 * math.pi)
        )
    elif family == "checker":
        u, v = _rotated(x, y, angle)
        f = rng.uniform(2.0, 5.0)
        t = (np.sin(2 * math.pi * f * u) * np.sin(2 * math.pi * f * v) > 0).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), 0.004 * min(h, w) + 0.3)
    elif family == "dots":
        t = np.zeros((h, w), np.float32)
        s = min(h, w)
        for _ in range(int(rng.integers(8, 25) * w / s * h / s)):
            c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.circle(
                t,
                c,
                max(1, int(rng.uniform(0.03, 0.09) * s)),
                float(rng.uniform(0.5, 1)),
                -1,
                cv2.LINE_AA,
            )
    elif family == "cells":
        # Voronoi cells with random shades: flat patches with straight edges, unlike any seen family.
        n = int(rng.integers(10, 30))
        seeds = rng.uniform(0, 1, (n, 2)) * [w / min(h, w), h / min(h, w)]
        d = (x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2
        t = rng.random(n).astype(np.float32)[np.argmin(d, axis=-1)]
    elif family == "rings":
        cx, cy = rng.uniform(-0.5, 1.5, 2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(3.0, 6.0) * r)
    elif family == "plaid":
        u, v = _rotated(x, y, angle)
        f1, f2 = rng.uniform(2.0, 6.0, 2)
        t = 0.25 * (2 + np.sin(2 * math.pi * f1 * u) + np.sin(2 * math.pi * f2 * v))
    else:
        raise ValueError(f"unknown texture family {family!r}")
    return np.clip(t, 0.0, 1.0).astype(np.float32)


_LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)


def _colour(rng: np.random.Generator, luma: tuple[float, float]) -> np.ndarray:
    """A random BGR colour (float32, 0..255) whose luma (BT.601, in 0..1) lies in ``luma``."""
    while True:  # rejection sampling keeps every hue possible wherever it can reach that luma
        bgr = rng.uniform(0, 255, 3).astype(np.float32)
        if luma[0] <= float(bgr @ _LUMA_BGR) / 255 <= luma[1]:
            return bgr


def coloured_texture(
    rng: np.random.Generator, family: str, h: int, w: int, luma: tuple[float, float]
) -> np.ndarray:
    """A texture blended between two random colours with luma in ``luma``: float32 [h, w, 3]."""
    t = texture(rng, family, h, w)[..., None]
    c0, c1 = _colour(rng, luma), _colour(rng, luma)
    return c0 * (1 - t) + c1 * t


# ----------------------------------------------------------------------------------------------
# Objects and their motion.


def _shape_polygon(shape: str, n: int = 48) -> np.ndarray:
    """Unit-radius outline of ``shape`` as [k, 2] points."""
    if shape == "ellipse":
        a = np.linspace(0, 2 * math.pi, n, endpoint=False)
        return np.stack([np.cos(a), 0.7 * np.sin(a)], 1)
    if shape == "rectangle":
        return np.array([[-1, -0.6], [1, -0.6], [1, 0.6], [-1, 0.6]], float)
    if shape == "star":
        a = np.linspace(0, 2 * math.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    k = {"triangle": 3, "diamond": 4, "hexagon": 6}[shape]
    a = np.linspace(0, 2 * math.pi, k, endpoint=False) - math.pi / 2
    return np.stack([np.cos(a), np.sin(a)], 1)


@dataclass(frozen=True)
class Sprite:
    """An object's look: colour [s, s, 3] float32 and alpha [s, s] float32 at radius s/2 pixels."""

    rgb: np.ndarray
    alpha: np.ndarray


def make_sprite(rng: np.random.Generator, size: int, families: Sequence[str]) -> Sprite:
    """A random object: a shape, rotated, filled with a two-colour texture and outlined."""
    size = max(8, size)
    poly = _shape_polygon(str(rng.choice(SHAPES)))
    c, s = math.cos(a := rng.uniform(0, 2 * math.pi)), math.sin(a)
    poly = poly @ np.array([[c, -s], [s, c]])
    pts = ((poly * 0.48 + 0.5) * size * 16).round().astype(np.int32)  # 4 fractional bits
    alpha = np.zeros((size, size), np.float32)
    cv2.fillPoly(alpha, [pts], 1.0, cv2.LINE_AA, shift=4)
    rgb = coloured_texture(rng, str(rng.choice(families)), size, size, OBJECT_LUMA)
    return Sprite(rgb, alpha)


@dataclass(frozen=True)
class Instance:
    """One object performing one action for ``frames`` frames.

    ``x``/``y`` (centre, short sides) and ``radius`` (short sides) are given at the instance's
    middle; ``velocity`` (short sides per frame, x) and ``zoom`` (log radius per frame) say how
    they change. Only one of the two is non-zero, and which one, with its sign, is the class.
    """

    action: str
    frames: int
    x: float
    y: float
    radius: float
    velocity: float
    zoom: float
    sprite: Sprite

    def pose(self, i: int) -> tuple[float, float, float]:
        """(x, y, radius) at frame ``i`` of the instance (0-based)."""
        dt = i - (self.frames - 1) / 2
        return self.x + self.velocity * dt, self.y, self.radius * math.exp(self.zoom * dt)


def draw_instance(
    rng: np.random.Generator,
    action: str,
    frames: int,
    fps: float,
    aspect: float = 1.0,
    families: Sequence[str] = SEEN_TEXTURES,
    sprite_px: int = 96,
    centre: tuple[float, float] | None = None,
    radius: float | None = None,
) -> Instance:
    """Draw an object performing ``action`` (a class, idle included: it stands still) for
    ``frames`` frames in a frame ``aspect`` (w/h) wide.

    Every single-frame property has a distribution that does not depend on ``action``: the
    sideways offset of a still-centred (zooming) object is drawn from the same uniform spread a
    sliding object sweeps, and the log-size of a sliding object from the same range a zooming one
    sweeps. Paths are centred in the frame's central square, the part that
    :func:`stream.preprocess.resize_and_crop` keeps. ``centre`` (x, y in short sides) and
    ``radius`` (at the middle of the action) pin those draws, for a demo that must stay in view.
    """
    if action not in CLASSES:
        raise ValueError(f"unknown action {action!r}; choose one of {CLASSES}")
    steps = max(1, frames - 1)
    speed = min(rng.uniform(*SPEED_RANGE) / fps, MAX_TRAVEL / steps)
    zoom_rate = min(rng.uniform(*ZOOM_RANGE) / fps, MAX_SWING / steps)
    travel = speed * steps  # how far a sliding object goes
    swing = zoom_rate * steps  # how much a zooming object's log-radius changes
    cx = (aspect - 1) / 2 + rng.uniform(0.25, 0.75)
    cy = rng.uniform(0.3, 0.7)
    log_r = rng.uniform(math.log(RADIUS_RANGE[0]), math.log(RADIUS_RANGE[1]))
    if centre is not None:
        cx, cy = centre
    if radius is not None:
        log_r = math.log(radius)
    velocity = zoom = 0.0
    if action == "slide":
        velocity = speed if rng.uniform() < 0.5 else -speed
        log_r += swing * rng.uniform(-0.5, 0.5)
    elif action == IDLE:
        # Standing still where and as big as a moving object could be at any of its frames.
        log_r += swing * rng.uniform(-0.5, 0.5)
        cx += travel * rng.uniform(-0.5, 0.5)
    else:
        zoom = zoom_rate if action == "approach" else -zoom_rate
        cx += travel * rng.uniform(-0.5, 0.5)
    sprite = make_sprite(rng, sprite_px, families)
    return Instance(action, frames, cx, cy, math.exp(log_r), velocity, zoom, sprite)


def composite(background: np.ndarray, inst: Instance, i: int) -> np.ndarray:
    """Frame ``i`` of ``inst`` over ``background`` (float32 [h, w, 3]) as uint8 BGR."""
    h, w = background.shape[:2]
    s = min(h, w)
    x, y, r = inst.pose(i)
    diameter = 2 * r * s  # the sprite spans two radii
    alpha, rgb = inst.sprite.alpha, inst.sprite.rgb
    if diameter < alpha.shape[0]:
        # Shrink by area first: warpAffine alone would alias the texture when shrinking a lot.
        px = max(4, math.ceil(diameter))
        alpha = cv2.resize(alpha, (px, px), interpolation=cv2.INTER_AREA)
        rgb = cv2.resize(rgb, (px, px), interpolation=cv2.INTER_AREA)
    size = alpha.shape[0]
    k = diameter / size  # sprite pixels -> frame pixels
    m = np.array([[k, 0, x * s - k * size / 2], [0, k, y * s - k * size / 2]], np.float32)
    a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    rgb = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR)
    out = background * (1 - a) + rgb * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Videos: a static background, actions one after another, idle stretches in between.


@dataclass(frozen=True)
class ActionSpan:
    """Ground truth of one action in a video: frames ``start_frame..stop_frame`` (inclusive)."""

    action: str
    start_frame: int
    stop_frame: int


@dataclass(frozen=True)
class Step:
    """One stretch of a video's plan: one object doing ``action`` for ``frames`` frames, or the
    background alone (``action`` None)."""

    action: str | None
    frames: int


def render_frames(
    rng: np.random.Generator,
    plan: Sequence[Step],
    height: int,
    width: int,
    fps: float,
    families: Sequence[str] = SEEN_TEXTURES,
    centred: bool = False,
) -> Iterator[np.ndarray]:
    """The frames (uint8 BGR [height, width, 3]) of a video that follows ``plan``.

    One background for the whole video, like one kitchen per EPIC video; new objects for every
    action. In an idle stretch nothing moves: the next action's object already waits, still, in
    its first pose (the background alone at the end of the video). So an action starts with
    motion, not with an object popping up, and a live clip that reaches back into the idle
    stretch sees a still object start to move. ``centred`` puts every path near the middle of
    the frame, with a middling size, so that long actions stay in view.
    """
    background = coloured_texture(rng, str(rng.choice(families)), height, width, BACKGROUND_LUMA)
    aspect = width / height
    actions = []
    for step in plan:
        if step.action is None:
            actions.append(None)
        elif centred:
            actions.append(_objects_in_view(rng, step.action, step.frames, fps, aspect, families))
        elif step.action == IDLE:
            actions.append(_still_objects(rng, step.frames, fps, aspect, families))
        else:
            actions.append(
                [(0, draw_instance(rng, step.action, step.frames, fps, aspect, families))]
            )

    def frame_of(objects: list[tuple[int, Instance]], i: int) -> np.ndarray:
        frame = background
        for start, inst in objects:
            if 0 <= i - start < inst.frames:
                frame = composite(frame, inst, i - start).astype(np.float32)
        return np.clip(frame + 0.5, 0, 255).astype(np.uint8)

    for k, (step, objects) in enumerate(zip(plan, actions, strict=True)):
        if objects is None:
            upcoming = next((a for a in actions[k + 1 :] if a is not None), None)
            still = frame_of(upcoming or [], 0)
            for _ in range(step.frames):
                yield still
            continue
        for i in range(step.frames):
            yield frame_of(objects, i)


def _still_objects(
    rng: np.random.Generator, frames: int, fps: float, aspect: float, families: Sequence[str]
) -> list[tuple[int, Instance]]:
    """(first frame, object) pairs for a labelled idle instance: one still object, none, or a cut
    from one still scene to another (object to object, object to none, none to object)."""
    draw = rng.uniform()
    if draw < EMPTY_IDLE_SHARE:
        return []  # an empty scene: the background alone
    if draw >= EMPTY_IDLE_SHARE + CUT_IDLE_SHARE or frames < 4:
        return [(0, draw_instance(rng, IDLE, frames, fps, aspect, families))]
    cut = int(rng.integers(2, frames - 1))
    before, after = rng.uniform() < 0.8, rng.uniform() < 0.8  # mostly object to object
    objects = []
    if before or not after:
        objects.append((0, draw_instance(rng, IDLE, cut, fps, aspect, families)))
    if after:
        objects.append((cut, draw_instance(rng, IDLE, frames - cut, fps, aspect, families)))
    return objects


def _objects_in_view(
    rng: np.random.Generator,
    action: str,
    frames: int,
    fps: float,
    aspect: float,
    families: Sequence[str],
) -> list[tuple[int, Instance]]:
    """(first frame, object) pairs that show ``action`` for ``frames`` frames, always in view.

    A zooming object sits near the middle and zooms between the DEMO_RADII: an action of 3.5 s
    then zooms by a factor 1.44 per second, a training rate; much longer ones would zoom slower
    than any training clip.
    Sideways, one object would leave the frame within seconds, so objects
    file past one after another at training speeds, each crossing the central square from edge
    to edge, the next one entering before the last has left (the first one already in view).
    """
    if action != "slide":
        # From DEMO_RADII[0] to DEMO_RADII[1] (or back) over the whole action: the sizes that
        # training clips show most, at the zoom rate the action's length allows.
        jitter = rng.uniform(-0.08, 0.08, 2)
        swing = math.log(DEMO_RADII[1] / DEMO_RADII[0])
        zoom = swing / max(1, frames - 1) * (1 if action == "approach" else -1)
        radius = math.sqrt(DEMO_RADII[0] * DEMO_RADII[1])
        inst = Instance(
            action,
            frames,
            aspect / 2 + jitter[0],
            0.5 + jitter[1],
            radius,
            0.0,
            zoom,
            make_sprite(rng, 96, families),
        )
        return [(0, inst)]
    objects, start = [], None
    direction = 1 if rng.uniform() < 0.5 else -1  # one way for the whole action
    while start is None or start < frames:
        radius = rng.uniform(0.15, 0.22)
        path = 1 + 2 * radius  # from just outside the central square to just outside its far side
        length = round(path / rng.uniform(*SPEED_RANGE) * fps) + 1
        velocity = path / (length - 1) * direction
        sprite = make_sprite(rng, 96, families)
        inst = Instance(
            action, length, aspect / 2, rng.uniform(0.35, 0.65), radius, velocity, 0.0, sprite
        )
        start = -round(0.35 * length) if start is None else start
        objects.append((start, inst))
        start += round(0.55 * length)
    return objects


def spans_of(plan: Sequence[Step], first_frame: int = 0) -> list[ActionSpan]:
    """Where each action of ``plan`` lies, numbering frames from ``first_frame``."""
    spans, frame = [], first_frame
    for step in plan:
        if step.action is not None:
            spans.append(ActionSpan(step.action, frame, frame + step.frames - 1))
        frame += step.frames
    return spans


def _seconds_to_frames(rng: np.random.Generator, seconds: tuple[float, float], fps: float) -> int:
    return max(2, round(rng.uniform(*seconds) * fps))


def plan_video(
    rng: np.random.Generator,
    segments: int,
    fps: float,
    action_seconds: tuple[float, float] = (1.3, 2.5),
    idle_seconds: tuple[float, float] = (0.3, 0.8),
) -> list[Step]:
    """A random plan: idle, then ``segments`` actions of random classes (idle among them, as a
    labelled instance of its own), each followed by an unlabelled idle gap.

    One object per action: a clip never shows one object vanish and another appear in its
    place, a jump that would hide the motion (and the validation clip, centred in the action,
    would often straddle it).
    """
    plan = [Step(None, _seconds_to_frames(rng, idle_seconds, fps))]
    for _ in range(segments):
        plan.append(Step(str(rng.choice(CLASSES)), _seconds_to_frames(rng, action_seconds, fps)))
        plan.append(Step(None, _seconds_to_frames(rng, idle_seconds, fps)))
    return plan


# ----------------------------------------------------------------------------------------------
# Layout A on disk.

FRAME_NAME = "frame_{:010d}.jpg"
TRAIN_COLUMNS = (
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
)
VAL_COLUMNS = (
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
    "action_class",
)
METADATA = "synth.json"
PARTICIPANTS = 8
DEFAULT_FPS = 14.0  # with clip_seconds 1.0 and 8 frames, every second frame: steps of exactly 2
DEFAULT_SIZE = 64  # the short side; frames are 4:3, so the centre crop drops a little each side


def _check_options(**values: float) -> None:
    least = {"videos": 1, "segments": 1, "size": 16}
    for name, value in values.items():
        if name == "fps" and not value > 0:
            raise OptionError(f"fps must be positive, got {value}")
        if name in least and value < least[name]:
            raise OptionError(f"{name} must be at least {least[name]}, got {value}")


def timestamp(seconds: float) -> str:
    """EPIC's "HH:MM:SS.ff"."""
    centis = round(seconds * 100)
    hours, rest = divmod(centis, 360_000)
    minutes, rest = divmod(rest, 6_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"


def _seed(seed: int, *path: int) -> np.random.Generator:
    # One independent stream per (seed, split, video): videos do not change when others are added.
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def _row(
    split: str,
    number: int,
    pid: str,
    vid: str,
    span: ActionSpan,
    fps: float,
    rng: np.random.Generator,
) -> dict[str, str | int]:
    verb = span.action.replace(" ", "-")
    noun = "object"
    start_s, stop_s = (span.start_frame - 1) / fps, (span.stop_frame - 1) / fps
    # The real annotations carry stray leading spaces in action_class; so do some of ours.
    name = (" " if rng.uniform() < 0.25 else "") + span.action
    common = {
        "participant_id": pid,
        "video_id": vid,
        "narration": f"{span.action} {noun}",
        "start_timestamp": timestamp(start_s),
        "stop_timestamp": timestamp(stop_s),
        "start_frame": span.start_frame,
        "stop_frame": span.stop_frame,
        "verb": verb,
        "verb_class": CLASSES.index(span.action),
        "noun": noun,
        "noun_class": 0,
        "all_nouns": f"['{noun}']",
        "all_noun_classes": "[0]",
        "action_class": name,
    }
    if split == "train":
        return {"uid": number, **common}
    return {"narration_id": f"{vid}_{number}", "narration_timestamp": timestamp(start_s), **common}


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    videos: int = 240,
    val_videos: int | None = None,
    segments: int = 4,
    size: int = DEFAULT_SIZE,
    fps: float = DEFAULT_FPS,
    aspect: float = 4 / 3,
    quality: int = 90,
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset in layout A under ``out_dir`` and return that folder.

    ``videos`` training videos (and ``val_videos``, by default a third as many, at least one) of
    ``segments`` actions each, frames ``size`` pixels high, recorded at ``fps``. The fps is written
    to ``synth.json`` and README.txt: the data module needs the same value (``data.fps``) to turn
    ``clip_seconds`` into frames.
    """
    _check_options(videos=videos, segments=segments, size=size, fps=fps)
    if val_videos is not None and val_videos < 1:
        raise OptionError(f"val_videos must be at least 1, got {val_videos}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    val_videos = max(1, videos // 3) if val_videos is None else val_videos
    height, width = size, round(size * aspect)
    splits = {"train": videos, "val": val_videos}
    plans = {
        split: [plan_video(_seed(seed, s, v, 0), segments, fps) for v in range(count)]
        for s, (split, count) in enumerate(splits.items())
    }
    total = sum(step.frames for ps in plans.values() for plan in ps for step in plan)
    with _progress(progress, total, f"writing {total} frames to {root}") as advance:
        for s, (split, count) in enumerate(splits.items()):
            columns = TRAIN_COLUMNS if split == "train" else VAL_COLUMNS
            with open(root / f"{split}_action_classes.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                number = 0
                for v in range(count):
                    pid = f"P{v % PARTICIPANTS + 1:02d}"
                    vid = f"{pid}_{s + 1}{v + 1:02d}"
                    folder = root / split / pid / vid
                    folder.mkdir(parents=True, exist_ok=True)
                    plan = plans[split][v]
                    frames = render_frames(_seed(seed, s, v, 1), plan, height, width, fps)
                    for index, frame in enumerate(frames, start=1):
                        cv2.imwrite(
                            str(folder / FRAME_NAME.format(index)),
                            frame,
                            [cv2.IMWRITE_JPEG_QUALITY, quality],
                        )
                        advance()
                    names = _seed(seed, s, v, 2)
                    for span in spans_of(plan, first_frame=1):
                        writer.writerow(_row(split, number, pid, vid, span, fps, names))
                        number += 1
    (root / "class_names.json").write_text(
        json.dumps({name: i for i, name in enumerate(CLASSES)}, indent=2) + "\n"
    )
    meta = {
        "generator": "train.synth",
        "seed": seed,
        "fps": fps,
        "width": width,
        "height": height,
        "videos": splits,
        "segments_per_video": segments,
        "classes": list(CLASSES),
        "textures": list(SEEN_TEXTURES),
    }
    (root / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    (root / "README.txt").write_text(
        f"Synthetic actions written by `epic-train synth` (train/synth.py), seed {seed}.\n"
        f"Layout A of EPIC-KITCHENS. Frames are {width}x{height} at {fps:g} fps:\n"
        f"train with --data.fps {fps:g} so that clip_seconds means the same time here.\n"
        f"Classes: {', '.join(CLASSES)}. No single frame tells them apart; see docs/demo-model.md.\n"
    )
    return root


class _progress:
    """A rich progress bar when asked for, a no-op otherwise: ``with _progress(...) as advance``."""

    def __init__(self, show: bool, total: int, description: str):
        self.show, self.total, self.description = show, total, description

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=False)
        self.bar.start()
        task = self.bar.add_task(self.description, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.show:
            self.bar.stop()


# ----------------------------------------------------------------------------------------------
# The demo video.

DEMO_SEQUENCE: tuple[tuple[str, float], ...] = (
    ("slide", 7.0),
    ("approach", 3.5),
    ("recede", 3.5),
    ("slide", 7.0),
    ("recede", 3.5),
    ("approach", 3.5),
)


def render_sequence_video(
    path: str | Path,
    segments: Sequence[tuple[str, float]] = DEMO_SEQUENCE,
    *,
    seed: int = 0,
    size: int = 240,
    fps: float = DEFAULT_FPS,
    background: str = "unseen",
    aspect: float = 4 / 3,
    idle_seconds: float = 1.5,
) -> list[ActionSpan]:
    """Write an mp4v video that plays ``segments`` ((action, seconds) pairs) in order and return
    their ground truth (0-based frame numbers, like epic-stream's ``frame_index``).

    ``idle_seconds`` of stillness come before, between and after the actions (long enough that
    a live 1 s clip at an action's start does not reach back to the previous action). Objects
    are kept in view (see :func:`_objects_in_view`). With
    ``background="unseen"`` the background and the objects use texture families that no training
    video has (Voronoi cells, rings, plaid: UNSEEN_TEXTURES); ``"seen"`` uses the training
    families. The ground truth is also written next to the video as ``<path>.json``.
    """
    if background not in ("unseen", "seen"):
        raise OptionError(f"background must be 'unseen' or 'seen', got {background!r}")
    _check_options(size=size, fps=fps)
    families = UNSEEN_TEXTURES if background == "unseen" else SEEN_TEXTURES
    # Seeds in their own space (a leading 1): the demo never repeats a training video's draws.
    rng = _seed(1, seed)
    idle = Step(None, max(1, round(idle_seconds * fps)))
    plan = [idle]
    for action, seconds in segments:
        if action not in ACTIONS:
            raise OptionError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
        plan += [Step(action, max(2, round(seconds * fps))), idle]
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    height, width = size, round(size * aspect)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OutputError(f"cannot write video {path} (mp4v); check the name ends in .mp4")
    try:
        for frame in render_frames(rng, plan, height, width, fps, families, centred=True):
            writer.write(frame)
    finally:
        writer.release()
    spans = spans_of(plan)
    frames = sum(step.frames for step in plan)
    truth = {
        "video": path.name,
        "fps": fps,
        "frames": frames,
        "width": width,
        "height": height,
        "background": background,
        "textures": list(families),
        "frame_numbering": "0-based, like epic-stream's frame_index; stop_frame inclusive",
        "segments": [
            {
                **asdict(s),
                "label": s.action,
                "start_s": s.start_frame / fps,
                "end_s": (s.stop_frame + 1) / fps,
            }
            for s in spans
        ],
    }
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(truth, indent=2) + "\n")
    return spans


# ----------------------------------------------------------------------------------------------
# Command line: `epic-train synth` (python -m train synth) hands its arguments to main().


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epic-train synth",
        description="Write the synthetic action dataset (EPIC layout A) and/or a demo video with "
        "ground truth, on backgrounds no training video has.",
    )
    parser.add_argument("--out", type=Path, help="dataset folder to write (layout A)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument(
        "--videos",
        type=int,
        default=240,
        help="training videos (default: 240); validation gets a third as many",
    )
    parser.add_argument(
        "--val-videos",
        type=int,
        default=None,
        help="validation videos (default: a third of --videos)",
    )
    parser.add_argument("--segments", type=int, default=4, help="actions per video (default: 4)")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"frame height in pixels, frames are 4:3 (default: {DEFAULT_SIZE} for "
        "the dataset, 240 for the demo video)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"frame rate; train with the same --data.fps (default: {DEFAULT_FPS:g})",
    )
    parser.add_argument(
        "--demo-video",
        type=Path,
        metavar="PATH",
        help="also write a demo video (mp4v) of several actions in sequence on "
        "unseen backgrounds, with its ground truth in PATH.json",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.out is None and args.demo_video is None:
            raise OptionError("nothing to do: give --out DIR (dataset) and/or --demo-video PATH")
        if args.out is not None:
            if args.out.exists() and any(args.out.iterdir()):
                raise OutputError(f"{args.out} exists and is not empty; choose a new folder")
            root = generate_dataset(
                args.out,
                seed=args.seed,
                videos=args.videos,
                val_videos=args.val_videos,
                segments=args.segments,
                size=args.size or DEFAULT_SIZE,
                fps=args.fps,
                progress=not args.quiet,
            )
            print(f"wrote {root} ({args.fps:g} fps: train with --data.fps {args.fps:g})")
        if args.demo_video is not None:
            spans = render_sequence_video(
                args.demo_video, seed=args.seed, size=args.size or 240, fps=args.fps
            )
            print(f"wrote {args.demo_video} and {args.demo_video}.json ({len(spans)} actions)")
    except EpicError as err:
        if args.debug:
            raise
        print(f"epic-train synth: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
