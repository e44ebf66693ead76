"""The ONNX model contract: the only thing stream/ knows about models.

A model that meets it works with epic-stream, whoever made it:

* input ``frames``: uint8, BGR, shape [batch, T, S, S, 3], frames oldest to newest, batch dynamic;
  each frame already passed through :func:`stream.preprocess.resize_and_crop`;
* output ``scores``: float32 [batch, C], probabilities;
* metadata ``class_names`` (JSON list of C strings) and ``clip_seconds`` (source time from the
  first to the last frame of a clip); ``num_frames``, ``image_size`` and ``description`` optional.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from stream.errors import ContractError, ModelError

INPUT_NAME = "frames"
OUTPUT_NAME = "scores"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelContract:
    """What a validated model promises; safe to share between threads."""

    path: str
    num_frames: int
    image_size: int
    class_names: tuple[str, ...]
    clip_seconds: float | None  # None: the model did not say; clips are consecutive frames
    description: str = ""
    # The largest batch the model takes: None when its batch is dynamic (the contract), 1 for a
    # model made elsewhere with a static batch of one.
    max_batch: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _static_dim(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _meta_int(meta: dict[str, str], key: str, where: str) -> int | None:
    if key not in meta:
        return None
    try:
        value = int(meta[key])
    except ValueError:
        raise ContractError(f"{where}: metadata {key}={meta[key]!r} is not an integer") from None
    if value < 1:
        raise ContractError(f"{where}: metadata {key} must be at least 1, got {value}")
    return value


def _agreeing(
    static: int | None, meta: int | None, key: str, shape: list, where: str
) -> int | None:
    """The input's fixed dimension, or the metadata's value where the input leaves it open.

    Where both are given they must agree: a model that says one thing in its metadata and another
    in its input would be fed clips of a length or size that its author did not mean.
    """
    if static is not None and meta is not None and static != meta:
        raise ContractError(
            f"{where}: metadata {key}={meta} contradicts input '{INPUT_NAME}' of shape {shape}"
        )
    return static or meta


def read_contract(session, path: str | Path) -> ModelContract:
    """Check an onnxruntime ``InferenceSession`` against the contract and return what it promises.

    Raises :class:`ContractError` naming the part of the contract that is broken.
    """
    where = str(path)
    inputs = {i.name: i for i in session.get_inputs()}
    if INPUT_NAME not in inputs:
        names = ", ".join(inputs) or "none"
        raise ContractError(
            f"{where}: the model has no input named '{INPUT_NAME}' (it has: {names})"
        )
    frames = inputs[INPUT_NAME]
    if frames.type != "tensor(uint8)":
        raise ContractError(
            f"{where}: input '{INPUT_NAME}' must be uint8 BGR frames, but its type is {frames.type}"
        )
    shape = list(frames.shape)
    if len(shape) != 5:
        raise ContractError(
            f"{where}: input '{INPUT_NAME}' must have rank 5 [batch, T, S, S, 3], but it has shape {shape}"
        )
    if _static_dim(shape[4]) != 3:
        raise ContractError(
            f"{where}: input '{INPUT_NAME}' must end in 3 colour channels (BGR), but its shape is {shape}"
        )
    max_batch = _static_dim(shape[0])
    if max_batch is not None and max_batch != 1:
        raise ContractError(
            f"{where}: input '{INPUT_NAME}' has a static batch of {max_batch}; export it with a "
            "dynamic batch (or a batch of 1)"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    if OUTPUT_NAME not in outputs:
        names = ", ".join(outputs) or "none"
        raise ContractError(
            f"{where}: the model has no output named '{OUTPUT_NAME}' (it has: {names})"
        )
    scores = outputs[OUTPUT_NAME]
    if len(scores.shape) != 2:
        raise ContractError(
            f"{where}: output '{OUTPUT_NAME}' must have shape [batch, classes], but it has {scores.shape}"
        )

    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "class_names" not in meta:
        raise ContractError(
            f"{where}: metadata 'class_names' is missing; export the model with epic-export or add a "
            "JSON list of class names to its metadata_props"
        )
    try:
        class_names = json.loads(meta["class_names"])
    except json.JSONDecodeError:
        raise ContractError(f"{where}: metadata 'class_names' is not valid JSON") from None
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise ContractError(f"{where}: metadata 'class_names' must be a JSON list of strings")
    num_classes = _static_dim(scores.shape[1])
    if num_classes is not None and num_classes != len(class_names):
        raise ContractError(
            f"{where}: metadata 'class_names' has {len(class_names)} names but output "
            f"'{OUTPUT_NAME}' has {num_classes} classes"
        )
    if not class_names:
        raise ContractError(f"{where}: metadata 'class_names' is empty")

    num_frames = _agreeing(
        _static_dim(shape[1]), _meta_int(meta, "num_frames", where), "num_frames", shape, where
    )
    size_h, size_w = _static_dim(shape[2]), _static_dim(shape[3])
    if size_h is not None and size_w is not None and size_h != size_w:
        raise ContractError(
            f"{where}: input '{INPUT_NAME}' frames must be square, but its shape is {shape}"
        )
    image_size = _agreeing(
        size_h or size_w, _meta_int(meta, "image_size", where), "image_size", shape, where
    )
    if num_frames is None or image_size is None:
        raise ContractError(
            f"{where}: cannot tell the clip length and frame size: input '{INPUT_NAME}' has shape "
            f"{shape} and the metadata has no num_frames/image_size"
        )

    clip_seconds: float | None = None
    if "clip_seconds" in meta:
        try:
            clip_seconds = float(meta["clip_seconds"])
        except ValueError:
            raise ContractError(
                f"{where}: metadata clip_seconds={meta['clip_seconds']!r} is not a number"
            ) from None
        # NaN would reach math.ceil when the ring is sized; 0 would squeeze T frames into one
        # instant. Only a single-frame model's clip truly spans no time.
        least = "at least 0" if num_frames == 1 else "positive"
        if (
            not math.isfinite(clip_seconds)
            or clip_seconds < 0
            or (clip_seconds == 0 and num_frames > 1)
        ):
            raise ContractError(
                f"{where}: metadata clip_seconds must be a finite number of seconds, {least}, "
                f"got {meta['clip_seconds']!r}"
            )
    else:
        log.warning(
            "%s: metadata 'clip_seconds' is missing; clips will be %d consecutive frames",
            where,
            num_frames,
        )

    return ModelContract(
        path=where,
        num_frames=num_frames,
        image_size=image_size,
        class_names=tuple(class_names),
        clip_seconds=clip_seconds,
        description=meta.get("description", ""),
        max_batch=max_batch,
    )


def load_contract(path: str | Path) -> ModelContract:
    """Open ``path`` on the CPU and validate it; for tools that only need to check a model."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a loadable ONNX model: {first}") from exc
    return read_contract(session, path)
