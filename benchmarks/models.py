"""The models the benchmarks run: real TimeSformer presets and a dial model of chosen cost.

* TimeSformer presets are built with fixed random weights (a seed) and exported with the
  project's own ``export_onnx``; timing does not depend on the weights. Exports take a minute
  or more on a small CPU, so they are cached by what determines them, including the source of
  the model and export code (a code change re-exports).
* The dial model meets the contract and costs what you ask: uint8 frames -> a chain of ``layers``
  [H, H] MatMul+Tanh over the clip's rows -> softmax. Its cost grows linearly with ``layers``, so
  :func:`calibrate_dial` turns milliseconds into a layer count on this machine.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, Stats, cpu_session, ms_per_run

SEED = 0
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
DIAL_HIDDEN = 256
DIAL_CLASSES = 10
OPSET = 18  # the dial model's; TimeSformer files use export's DEFAULT_OPSET
_CODE = ("train/model.py", "train/normalize.py", "export/onnx.py", "export/wrapper.py")


def class_names(count: int) -> list[str]:
    return [f"class_{i}" for i in range(count)]


# -- the dial model ---------------------------------------------------------------------------------


def dial_proto(
    layers: int,
    *,
    num_frames: int = 8,
    image_size: int = 112,
    hidden: int = DIAL_HIDDEN,
    num_classes: int = DIAL_CLASSES,
    clip_seconds: float = 1.0,
    float_input: bool = False,
    seed: int = SEED,
):
    """A contract model (or, with ``float_input``, one taking normalized float [1, 3, T, S, S],
    as the original project fed its network) whose cost is ``layers`` MatMuls of [T*S, H] x [H, H].

    One weight matrix is shared by every layer, so the file stays small however costly it is.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    t, s = num_frames, image_size
    w_in = rng.normal(0, 1 / np.sqrt(s * 3), (s * 3, hidden)).astype(np.float32)
    w = rng.normal(0, 1 / np.sqrt(hidden), (hidden, hidden)).astype(np.float32)
    w_out = rng.normal(0, 4 / np.sqrt(hidden), (hidden, num_classes)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w_in, "w_in"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w_out, "w_out"),
        numpy_helper.from_array(np.array([0, t * s, s * 3], np.int64), "rows"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = []
    if float_input:
        inp = helper.make_tensor_value_info("frames", TensorProto.FLOAT, [1, 3, t, s, s])
        nodes.append(helper.make_node("Transpose", ["frames"], ["nthwc"], perm=[0, 2, 3, 4, 1]))
        nodes.append(helper.make_node("Reshape", ["nthwc", "rows"], ["x"]))
    else:
        inp = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", t, s, s, 3])
        nodes += [
            helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["f", "rows"], ["r"]),
            helper.make_node("Mul", ["r", "inv255"], ["u"]),
            helper.make_node("Sub", ["u", "half"], ["x"]),
        ]
    nodes.append(helper.make_node("MatMul", ["x", "w_in"], ["h0"]))
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers}", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
    ]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", num_classes])
    graph = helper.make_graph(nodes, f"dial{layers}", [inp], [out], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8  # readable by every onnxruntime that supports opset 18
    helper.set_model_props(
        proto,
        {
            "class_names": json.dumps(class_names(num_classes)),
            "clip_seconds": repr(float(clip_seconds)),
            "num_frames": str(t),
            "image_size": str(s),
            "description": f"benchmark dial model: {layers} x MatMul[{t * s}x{hidden}x{hidden}] + Tanh",
        },
    )
    onnx.checker.check_model(proto)
    return proto


def write_dial(path: Path, layers: int, **kwargs) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(dial_proto(layers, **kwargs), str(path))
    return path


def random_clip(num_frames: int, image_size: int, batch: int = 1, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, num_frames, image_size, image_size, 3), dtype=np.uint8)


@dataclass(frozen=True)
class DialModel:
    path: Path
    layers: int
    ms: Stats  # measured session.run time on this machine, batch 1


def calibrate_dial(
    folder: Path,
    targets_ms: tuple[float, ...],
    *,
    num_frames: int,
    image_size: int,
    clip_seconds: float,
    runs: int = 5,
) -> list[DialModel]:
    """Dial models that take about ``targets_ms`` each here, with their measured cost.

    Two probe models give the fixed cost and the cost per layer; each target then gets its
    layer count and is measured again, because the fit is only as good as the machine is quiet.
    """
    clip = random_clip(num_frames, image_size)
    kw = {"num_frames": num_frames, "image_size": image_size, "clip_seconds": clip_seconds}
    probe = 16
    base = ms_per_run(
        cpu_session(write_dial(folder / "dial-probe0.onnx", 0, **kw)), clip, runs
    ).median
    per = (
        ms_per_run(
            cpu_session(write_dial(folder / f"dial-probe{probe}.onnx", probe, **kw)), clip, runs
        ).median
        - base
    ) / probe
    per = max(per, 1e-3)
    models = []
    for target in targets_ms:
        layers = max(0, round((target - base) / per))
        path = write_dial(folder / f"dial-{layers}.onnx", layers, **kw)
        models.append(DialModel(path, layers, ms_per_run(cpu_session(path), clip, runs)))
    return models


# -- TimeSformer presets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeSformerSpec:
    preset: str
    image_size: int
    num_frames: int = 8
    num_classes: int = 400
    clip_seconds: float = 1.0
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.preset} {self.num_frames}x{self.image_size}"

    def key(self) -> str:
        """A name for the cached files: what determines them, including the code that makes them."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(str(SEED).encode())
        for rel in _CODE:
            with open(ROOT / rel, "rb") as f:
                h.update(f.read())
        return f"{self.preset}-{self.num_frames}x{self.image_size}-{h.hexdigest()[:12]}"


def build_network(spec: TimeSformerSpec):
    """The TimeSformer of ``spec`` with the same random weights every time (eval mode, CPU)."""
    import torch

    from train.model import build_timesformer

    torch.manual_seed(SEED)
    return build_timesformer(
        spec.preset,
        img_size=spec.image_size,
        num_frames=spec.num_frames,
        num_classes=spec.num_classes,
        **spec.overrides,
    ).eval()


def contract_module(network):
    """The network behind the contract's uint8 BGR front and softmax, as the export wraps it."""
    from export.onnx import prepare_model

    return prepare_model(network, MEAN, STD)


@dataclass(frozen=True)
class ExportedModel:
    spec: TimeSformerSpec
    fp32: Path
    int8: Path
    export_s: float  # 0 when both came from the cache


def export_spec(network, spec: TimeSformerSpec, path: Path, description: str) -> Path:
    """``network`` as a contract file at ``path``, via the project's own ``export_onnx``."""
    from export.onnx import DEFAULT_OPSET, export_onnx

    return export_onnx(
        network,
        path,
        class_names=class_names(spec.num_classes),
        num_frames=spec.num_frames,
        image_size=spec.image_size,
        clip_seconds=spec.clip_seconds,
        mean=MEAN,
        std=STD,
        opset=DEFAULT_OPSET,
        description=description,
    )


def export_timesformer(spec: TimeSformerSpec, cache: Path, network=None) -> ExportedModel:
    """fp32 (via ``export_onnx``, parity-checked) and int8 (``quantize_int8``) files, cached."""
    from export.onnx import quantize_int8

    folder = Path(cache) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    key = spec.key()
    fp32, int8 = folder / f"{key}.onnx", folder / f"{key}-int8.onnx"
    start = time.perf_counter()
    if not fp32.exists():
        # Files of an older version of the code are never read again: drop them (base is 0.5 GB).
        prefix = f"{spec.preset}-{spec.num_frames}x{spec.image_size}-"
        for stale in folder.glob(f"{prefix}*.onnx"):
            if not stale.name.startswith(key):
                stale.unlink(missing_ok=True)
        network = network if network is not None else build_network(spec)
        export_spec(network, spec, fp32, f"benchmark: random-weight TimeSformer {spec.label}")
    if not int8.exists():
        scratch = int8.with_name(f".{int8.name}.tmp")
        quantize_int8(fp32, scratch)
        scratch.replace(int8)
    return ExportedModel(spec, fp32, int8, time.perf_counter() - start)


def _softmaxed(network):
    from torch import nn

    class Softmaxed(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, clip):
            return self.net(clip).softmax(dim=-1)

    return Softmaxed(network).eval()


def export_float_network(spec: TimeSformerSpec, cache: Path, network=None) -> Path:
    """The same weights as :func:`export_timesformer`, taking float [1, 3, T, S, S] normalized RGB
    (what the original project's loop prepared in numpy) and giving softmax scores."""
    import contextlib
    import io
    import warnings

    import torch

    from export.onnx import DEFAULT_OPSET

    folder = Path(cache) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.key()}-float-input.onnx"
    if path.exists():
        return path
    network = network if network is not None else build_network(spec)
    module = _softmaxed(network)
    example = torch.zeros(1, 3, spec.num_frames, spec.image_size, spec.image_size)
    scratch = path.with_name(f".{path.name}.tmp")
    # The exporter export_onnx uses, at its opset, so the two files differ only in their front.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(scratch),
            dynamo=False,
            input_names=["frames"],
            output_names=["scores"],
            opset_version=DEFAULT_OPSET,
            do_constant_folding=True,
        )
    scratch.replace(path)
    return path
