"""Tiny ONNX models for tests, built with onnx.helper: no torch, no downloads, milliseconds to build.

* :func:`probe_model` meets the contract and reveals what it was fed: its scores encode the mean
  intensity of every frame of the clip (:func:`decode_probe` gets them back), so a test can check
  which frames reached the model, in which order.
* :func:`classifier_model` meets the contract with a plain softmax over a few classes; its keyword
  arguments break any part of the contract on purpose (input name, dtype, rank, channels, output,
  class_names) for validation tests.
* :func:`level_model` meets the contract and names the grey level nearest to the clip's mean
  intensity: its answer is a pure function of the frames, so a video of solid grey segments has
  a known right answer for every clip that lies inside one segment.
* :func:`matmul_model` meets the contract and costs a chosen amount of compute (a chain of
  N x N matrix products that depends on the input, so it cannot be folded away): a model of known
  cost for overhead measurements.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_UNSET = object()


def save_graph(graph: onnx.GraphProto, path: Path, metadata: dict[str, str]) -> Path:
    """``graph`` as a checked model file that every ONNX Runtime we support reads."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def contract_metadata(
    class_names: Sequence[str] | None,
    clip_seconds: float | None,
    num_frames: int,
    image_size: int,
    description: str = "test model",
) -> dict[str, str]:
    meta = {
        "num_frames": str(num_frames),
        "image_size": str(image_size),
        "description": description,
    }
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    if clip_seconds is not None:
        meta["clip_seconds"] = repr(float(clip_seconds))
    return meta


def probe_model(
    path: Path,
    *,
    num_frames: int = 4,
    image_size: int = 16,
    clip_seconds: float | None = 0.3,
) -> Path:
    """A contract model whose scores are ``[m_0, ..., m_{T-1}, rest] / (255 T)``-style probabilities.

    ``m_t`` is the mean pixel value of frame t of the clip; the last class takes the remainder so
    that the scores are non-negative and sum to 1. Class names are ``frame0 .. frame{T-1}, rest``.
    """
    t = num_frames
    frames = helper.make_tensor_value_info(
        "frames", TensorProto.UINT8, ["batch", t, image_size, image_size, 3]
    )
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", t + 1])
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["means"], axes=[2, 3, 4], keepdims=0),
        helper.make_node("Div", ["means", "scale"], ["parts"]),
        helper.make_node("ReduceSum", ["parts", "axis1"], ["total"], keepdims=1),
        helper.make_node("Sub", ["one", "total"], ["rest"]),
        helper.make_node("Concat", ["parts", "rest"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(255.0 * t, np.float32), "scale"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph = helper.make_graph(nodes, "probe", [frames], [scores], inits)
    names = [f"frame{i}" for i in range(t)] + ["rest"]
    return save_graph(
        graph, path, contract_metadata(names, clip_seconds, t, image_size, "probe model")
    )


def decode_probe(scores: Sequence[float], num_frames: int) -> np.ndarray:
    """The per-frame mean intensities a :func:`probe_model` saw, from its scores."""
    return np.asarray(scores[:num_frames], np.float64) * 255.0 * num_frames


def classifier_model(
    path: Path,
    *,
    num_frames: int = 4,
    image_size: int = 16,
    class_names: Sequence[str] | None = ("cut", "stir", "wash"),
    clip_seconds: float | None = 1.0,
    num_classes: int | None = None,
    input_name: str = "frames",
    input_type: int = TensorProto.UINT8,
    input_shape: Sequence | object = _UNSET,
    output_name: str = "scores",
    metadata: dict[str, str] | None = None,
) -> Path:
    """A softmax classifier over ``class_names`` that meets the contract unless told otherwise.

    ``num_classes`` (default: the number of names) sets the output width, so a mismatch with
    ``class_names`` can be made; ``metadata`` entries replace the generated ones (None drops one).
    """
    if input_shape is _UNSET:
        input_shape = ["batch", num_frames, image_size, image_size, 3]
    rank = len(input_shape)
    classes = num_classes if num_classes is not None else len(class_names or ())
    x = helper.make_tensor_value_info(input_name, input_type, list(input_shape))
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])
    nodes = [
        helper.make_node("Cast", [input_name], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=list(range(1, rank)), keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),
        helper.make_node("Mul", ["m1", "weights"], ["_scaled"]),
        helper.make_node("Add", ["_scaled", "bias"], ["_logits"]),
        helper.make_node("Softmax", ["_logits"], [output_name], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(
            np.linspace(-0.02, 0.02, classes, dtype=np.float32)[None], "weights"
        ),
        numpy_helper.from_array(np.linspace(0.0, 0.5, classes, dtype=np.float32)[None], "bias"),
    ]
    graph = helper.make_graph(nodes, "classifier", [x], [y], inits)
    meta = contract_metadata(class_names, clip_seconds, num_frames, image_size)
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return save_graph(graph, path, meta)


def level_model(
    path: Path,
    levels: dict[str, int],
    *,
    num_frames: int = 8,
    image_size: int = 16,
    clip_seconds: float | None = 1.0,
) -> Path:
    """A contract model whose class is the entry of ``levels`` (name -> grey level) nearest to the
    clip's mean intensity: scores ``softmax(-((mean - level) / 8) ** 2)``."""
    names = list(levels)
    frames = helper.make_tensor_value_info(
        "frames", TensorProto.UINT8, ["batch", num_frames, image_size, image_size, 3]
    )
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(names)])
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3, 4], keepdims=0),  # [b]
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),  # [b, 1]
        helper.make_node("Sub", ["m1", "levels"], ["d"]),  # [b, C]
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("Mul", ["d2", "sharpness"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([list(levels.values())], np.float32), "levels"),
        numpy_helper.from_array(np.array(-1.0 / 64.0, np.float32), "sharpness"),
    ]
    graph = helper.make_graph(nodes, "level", [frames], [scores], inits)
    meta = contract_metadata(names, clip_seconds, num_frames, image_size, "grey level model")
    return save_graph(graph, path, meta)


def matmul_model(
    path: Path,
    *,
    size: int = 256,
    depth: int = 8,
    num_frames: int = 4,
    image_size: int = 16,
    class_names: Sequence[str] = ("a", "b", "c"),
    clip_seconds: float | None = 1.0,
) -> Path:
    """A contract model costing ``depth`` products of ``size`` x ``size`` matrices per clip.

    The first matrix is shifted by the clip's mean intensity, so nothing can be precomputed;
    the weights are orthogonal, so the values stay finite however deep the chain.
    """
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((size, size)))
    weights = q.astype(np.float32)
    frames = helper.make_tensor_value_info(
        "frames", TensorProto.UINT8, ["batch", num_frames, image_size, image_size, 3]
    )
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(class_names)])
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3, 4], keepdims=1),  # [b,1,1,1,1]
        helper.make_node("Reshape", ["m", "shape_b11"], ["m3"]),  # [b, 1, 1]
        helper.make_node("Mul", ["m3", "tiny"], ["shift"]),
        helper.make_node("Add", ["w", "shift"], ["h0"]),  # [b, N, N]
    ]
    last = "h0"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [last, "w"], [f"h{i + 1}"]))
        last = f"h{i + 1}"
    nodes += [
        helper.make_node("ReduceMean", [last], ["rows"], axes=[1], keepdims=0),  # [b, N]
        helper.make_node("Slice", ["rows", "zero", "classes", "axis1"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_b11"),
        numpy_helper.from_array(np.array(1e-3, np.float32), "tiny"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([len(class_names)], np.int64), "classes"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    graph = helper.make_graph(nodes, "matmul", [frames], [scores], inits)
    meta = contract_metadata(class_names, clip_seconds, num_frames, image_size, "matmul cost model")
    return save_graph(graph, path, meta)


def faulty_model(
    path: Path,
    *,
    num_frames: int = 4,
    image_size: int = 16,
    clip_seconds: float | None = 0.3,
    nan_band: tuple[float, float] | None = None,
    fail_above: float | None = None,
) -> Path:
    """A two-class contract model (``dark``/``bright`` by the clip's mean grey level m) that
    misbehaves on purpose: its scores are NaN while ``nan_band[0] < m < nan_band[1]``, and
    ONNX Runtime raises (a Gather out of bounds) once ``m >= fail_above``."""
    frames = helper.make_tensor_value_info(
        "frames", TensorProto.UINT8, ["batch", num_frames, image_size, image_size, 3]
    )
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3, 4], keepdims=0),  # [b]
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),  # [b, 1]
        helper.make_node("Mul", ["m1", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits0"]),  # (m - 128) / 8 * [-1, 1]
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([[-1.0, 1.0]], np.float32) / 8, "weights"),
        numpy_helper.from_array(np.array([[16.0, -16.0]], np.float32), "bias"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    last = "logits0"
    if nan_band is not None:
        low, high = nan_band
        centre, half = (low + high) / 2, (high - low) / 2
        nodes += [
            helper.make_node("Sub", ["m1", "centre"], ["off"]),
            helper.make_node("Abs", ["off"], ["dist"]),
            helper.make_node("Sub", ["dist", "half"], ["outside"]),  # < 0 inside the band
            helper.make_node("Sqrt", ["outside"], ["root"]),  # NaN inside the band
            helper.make_node("Mul", ["root", "zero"], ["poison"]),  # 0 outside, NaN inside
            helper.make_node("Add", [last, "poison"], ["logits1"]),
        ]
        inits += [
            numpy_helper.from_array(np.array(centre, np.float32), "centre"),
            numpy_helper.from_array(np.array(half, np.float32), "half"),
        ]
        last = "logits1"
    if fail_above is not None:
        nodes += [
            helper.make_node("Div", ["m", "fail_level"], ["ratio"]),
            helper.make_node("Floor", ["ratio"], ["step"]),
            helper.make_node("Cast", ["step"], ["index"], to=TensorProto.INT64),  # 0, then 1+
            helper.make_node(
                "Gather", ["table", "index"], ["picked"], axis=0
            ),  # out of bounds at 1
            helper.make_node("Unsqueeze", ["picked", "axis1"], ["picked1"]),
            helper.make_node("Add", [last, "picked1"], ["logits2"]),
        ]
        inits += [
            numpy_helper.from_array(np.array(fail_above, np.float32), "fail_level"),
            numpy_helper.from_array(np.array([0.0], np.float32), "table"),
        ]
        last = "logits2"
    nodes.append(helper.make_node("Softmax", [last], ["scores"], axis=1))
    graph = helper.make_graph(nodes, "faulty", [frames], [scores], inits)
    meta = contract_metadata(
        ("dark", "bright"), clip_seconds, num_frames, image_size, "faulty model"
    )
    return save_graph(graph, path, meta)
