"""A torch network to one self-contained ONNX file under the model contract, checked for parity.

The graph is ``ContractModel``: training's FrameNormalizer, the network, softmax. Every export is
checked before it is kept: onnx.checker; a symbolic batch dimension and the requested opset;
ONNX Runtime against torch on the same uint8 clips at batch 1 and batch 2; and stream/'s own
contract validator.

Why the TorchScript exporter (``dynamo=False``), deprecated as it is in torch 2.14: the
torch.export-based one cannot write opset 17 for TimeSformer (it builds opset 18, its down-
conversion fails, and it keeps 18 without an error), it silently fixes the batch at 1 when the
example clip has batch 1, and it takes three to four times as long (TimeSformer-base: ~85 s
against ~55 s on two cores). The TorchScript exporter writes opsets 17 to 20 natively, keeps
``dynamic_axes`` symbolic, and puts the weights in the one .onnx file (TimeSformer-base is
~0.49 GB, under protobuf's 2 GB limit). The written file is checked for all three regardless,
so a change of exporter behaviour fails loudly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Container, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.errors import ExportError, ParityError
from export.wrapper import ContractModel
from stream.contract import INPUT_NAME, OUTPUT_NAME, ModelContract, read_contract
from stream.errors import ContractError, OptionError, OutputError
from train.model import TimeSformer

DEFAULT_OPSET = 17
# Static int8: each activation's range is this percentile of its magnitude on the calibration clips.
CALIBRATION_PERCENTILE = 99.999
MIN_OPSET = 17
MAX_OPSET = 20  # the TorchScript exporter's newest
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 2)


class Precision(str, Enum):
    """What the written file computes in; fp32 is always exported and checked against torch first."""

    FP32 = "fp32"
    FP16 = "fp16"  # for GPUs: half the size, half the memory traffic
    INT8 = "int8"  # for CPUs: dynamic quantization of the MatMul/Gemm weights


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name} {self.dtype} [{dims}]"


@dataclass(frozen=True)
class GraphInfo:
    """What a written .onnx file holds, for the report table."""

    path: Path
    size_bytes: int
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against torch on the same clips."""

    precision: str
    batches: tuple[int, ...]
    max_abs_diff: float
    top1_agreement: float

    @property
    def clips(self) -> int:
        return sum(self.batches)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OptionError(f"--opset must be {MIN_OPSET} or newer, up to {MAX_OPSET}; got {opset}")


def check_writable(path: Path, what: str = "output") -> None:
    """Fail in seconds, before a long export, if ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"{what} {path} is a directory; give a file path such as {path / 'model.onnx'}"
        )
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the folder for {what} {path}: {exc.strerror or exc}"
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} exists and is not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".epic-export-", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {what} in {parent}: {exc.strerror or exc}") from None


def contract_metadata(
    *,
    class_names: Sequence[str],
    clip_seconds: float,
    num_frames: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    description: str,
) -> dict[str, str]:
    return {
        "class_names": json.dumps(list(class_names), ensure_ascii=False),
        "clip_seconds": repr(float(clip_seconds)),
        "num_frames": str(int(num_frames)),
        "image_size": str(int(image_size)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "description": description,
    }


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(proto, metadata)


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
        for d in value_info.type.tensor_type.shape.dim
    )


def _dtype(value_info: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def describe_onnx(path: Path) -> GraphInfo:
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {i.name for i in proto.graph.initializer}
    return GraphInfo(
        path=Path(path),
        size_bytes=Path(path).stat().st_size,
        opset=opset,
        inputs=tuple(
            TensorInfo(v.name, _dtype(v), _dims(v))
            for v in proto.graph.input
            if v.name not in initializers
        ),
        outputs=tuple(TensorInfo(v.name, _dtype(v), _dims(v)) for v in proto.graph.output),
    )


def _check_signature(proto: onnx.ModelProto, num_frames: int, image_size: int) -> None:
    """The exporter can pin the batch to the example's; the contract needs it dynamic."""
    inputs = [v for v in proto.graph.input if v.name == INPUT_NAME]
    outputs = [v for v in proto.graph.output if v.name == OUTPUT_NAME]
    if not inputs or not outputs:
        raise ExportError(
            f"the exported graph lacks input '{INPUT_NAME}' or output '{OUTPUT_NAME}'"
        )
    frames, scores = _dims(inputs[0]), _dims(outputs[0])
    if not isinstance(frames[0], str) or not isinstance(scores[0], str):
        raise ExportError(
            f"the exported graph has a fixed batch size (input {list(frames)}, output {list(scores)}); "
            "the contract needs a dynamic batch dimension"
        )
    if frames[1:] != (num_frames, image_size, image_size, 3):
        raise ExportError(
            f"the exported input has shape {list(frames)}, expected [batch, {num_frames}, "
            f"{image_size}, {image_size}, 3]"
        )


def trace_to_onnx(
    model: nn.Module, *, num_frames: int, image_size: int, opset: int
) -> onnx.ModelProto:
    """torch -> ONNX proto with a symbolic batch dimension named 'batch'."""
    example = torch.zeros(2, num_frames, image_size, image_size, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many unrelated types for one cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(
            f"torch could not export the model to ONNX opset {opset}: {first}"
        ) from exc
    proto = onnx.load_model_from_string(buffer.getvalue())
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if written != opset:
        raise ExportError(f"asked torch for ONNX opset {opset}, but it wrote opset {written}")
    return proto


def open_session(
    path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"ONNX Runtime cannot load {path}: {first}") from exc


def parity_clips(count: int, num_frames: int, image_size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 BGR clips [count, T, S, S, 3]: noise reaches every input value and channel."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, num_frames, image_size, image_size, 3), dtype=np.uint8)


def split_batches(count: int, batches: Sequence[int] = PARITY_BATCHES) -> tuple[int, ...]:
    """Batch 1 then batch 2, repeating 2 for any further clips."""
    sizes: list[int] = []
    left = count
    for size in [*batches, *[batches[-1]] * count]:
        if left <= 0:
            break
        sizes.append(min(size, left))
        left -= sizes[-1]
    return tuple(sizes)


def torch_scores(model: nn.Module, clips: np.ndarray, batches: Sequence[int]) -> np.ndarray:
    out, start = [], 0
    with torch.inference_mode():
        for size in batches:
            out.append(model(torch.from_numpy(clips[start : start + size])).numpy())
            start += size
    return np.concatenate(out)


def session_scores(
    session: ort.InferenceSession, clips: np.ndarray, batches: Sequence[int]
) -> np.ndarray:
    out, start = [], 0
    for size in batches:
        out.append(session.run([OUTPUT_NAME], {INPUT_NAME: clips[start : start + size]})[0])
        start += size
    return np.concatenate(out).astype(np.float32)


def compare(
    precision: str, reference: np.ndarray, scores: np.ndarray, batches: Sequence[int]
) -> Parity:
    return Parity(
        precision=precision,
        batches=tuple(batches),
        max_abs_diff=float(np.abs(reference - scores).max()),
        top1_agreement=float((reference.argmax(-1) == scores.argmax(-1)).mean()),
    )


def time_session(
    session: ort.InferenceSession,
    clip: np.ndarray,
    *,
    runs: int = 5,
    budget_s: float = 10.0,
    warm_up: bool = True,
) -> float:
    """Median ms per batch-1 clip; stops early once ``budget_s`` is spent.

    ``warm_up=False`` for a session that has already run (the parity check warms it).
    """
    feed = {INPUT_NAME: clip[None] if clip.ndim == 4 else clip[:1]}
    if warm_up:
        session.run([OUTPUT_NAME], feed)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs and (not times or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def validate_contract(
    session: ort.InferenceSession,
    path: Path,
    *,
    class_names: Sequence[str],
    num_frames: int,
    image_size: int,
    clip_seconds: float,
) -> ModelContract:
    """stream/'s own validator must accept the file and read back exactly what was written."""
    contract = read_contract(session, path)
    expected = (tuple(class_names), num_frames, image_size, float(clip_seconds))
    got = (contract.class_names, contract.num_frames, contract.image_size, contract.clip_seconds)
    if got != expected:
        raise ContractError(
            f"{path}: the contract reads back {got[1:]} and {len(got[0])} names, "
            f"expected {expected[1:]} and {len(expected[0])} names"
        )
    return contract


def save_proto(proto: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(proto, str(path), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or ["invalid model"])[0]
        raise ExportError(f"onnx.checker rejects the exported model: {first}") from exc


@dataclass(frozen=True)
class VerifiedExport:
    """An fp32 export that passed every check, with what the checks measured."""

    path: Path
    contract: ModelContract
    parity: Parity
    clips: np.ndarray
    reference: np.ndarray  # torch's probabilities on ``clips``
    session: ort.InferenceSession | None = None  # ONNX Runtime on ``path``, already warm


def write_verified(
    contract_model: nn.Module,
    path: Path,
    *,
    metadata: dict[str, str],
    class_names: Sequence[str],
    num_frames: int,
    image_size: int,
    clip_seconds: float,
    opset: int,
    check_clips: int = 3,
) -> VerifiedExport:
    """Export ``contract_model`` to ``path`` and prove it: checker, parity, contract."""
    proto = trace_to_onnx(contract_model, num_frames=num_frames, image_size=image_size, opset=opset)
    _check_signature(proto, num_frames, image_size)
    set_metadata(proto, metadata)
    proto.graph.input[0].doc_string = "uint8 BGR frames [batch, T, S, S, 3], oldest first"
    proto.graph.output[0].doc_string = "float32 softmax probabilities [batch, classes]"
    save_proto(proto, path)
    del proto

    clips = parity_clips(max(check_clips, sum(PARITY_BATCHES)), num_frames, image_size)
    batches = split_batches(len(clips))
    reference = torch_scores(contract_model, clips, batches)
    session = open_session(path)
    parity = compare("fp32", reference, session_scores(session, clips, batches), batches)
    if not parity.max_abs_diff <= PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX Runtime and torch disagree on the exported model: max |Δp| = {parity.max_abs_diff:.2e} "
            f"> {PARITY_TOLERANCE:.0e} (batches {list(batches)}); the export is not kept"
        )
    contract = validate_contract(
        session,
        path,
        class_names=class_names,
        num_frames=num_frames,
        image_size=image_size,
        clip_seconds=clip_seconds,
    )
    return VerifiedExport(path, contract, parity, clips, reference, session)


def prepare_model(
    model: nn.Module, mean: Sequence[float], std: Sequence[float], *, copy_model: bool = True
) -> ContractModel:
    """The network as a CPU float32 eval model behind the contract's front and softmax.

    A TimeSformer is folded for inference (:meth:`TimeSformer.fold_for_inference`). The caller's
    module is copied first unless ``copy_model`` is False, so a training run can export its model
    and carry on with it.
    """
    network = copy.deepcopy(model) if copy_model else model
    network = network.float().cpu().eval()
    if isinstance(network, TimeSformer):
        network.fold_for_inference()
    return ContractModel(network, mean, std).eval()


@contextlib.contextmanager
def scratch(beside: Path, tag: str = ""):
    """A fresh .onnx path in ``beside``'s folder (same disk, so a rename is atomic); always removed.

    The path is only named, not created, so the file gets the usual permissions when written.
    """
    tmp = beside.parent / f".{beside.stem}{tag}-{uuid.uuid4().hex[:12]}.onnx"
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged(output: Path):
    """A temporary path that replaces ``output`` only if the block succeeds.

    A failed export never leaves a half-checked model behind, nor clobbers a good one.
    """
    with scratch(output) as tmp:
        yield tmp
        os.replace(tmp, output)


def export_onnx(
    model: nn.Module,
    output: str | Path,
    *,
    class_names: Sequence[str],
    num_frames: int,
    image_size: int,
    clip_seconds: float,
    mean: Sequence[float],
    std: Sequence[float],
    opset: int = DEFAULT_OPSET,
    description: str = "",
) -> Path:
    """Write ``model`` (logits from [B, 3, T, S, S] float) as a contract ONNX file at ``output``.

    The file holds FrameNormalizer(mean, std) -> model -> softmax, takes uint8 BGR
    [batch, T, S, S, 3] and is kept only if it passes onnx.checker, matches torch within
    1e-4 at batch 1 and 2, and passes stream.contract.read_contract.
    """
    output = Path(output)
    check_opset(opset)
    check_writable(output)
    contract_model = prepare_model(model, mean, std)
    metadata = contract_metadata(
        class_names=class_names,
        clip_seconds=clip_seconds,
        num_frames=num_frames,
        image_size=image_size,
        mean=mean,
        std=std,
        description=description,
    )
    with staged(output) as tmp:
        write_verified(
            contract_model,
            tmp,
            metadata=metadata,
            class_names=class_names,
            num_frames=num_frames,
            image_size=image_size,
            clip_seconds=clip_seconds,
            opset=opset,
        )
    return output


def is_constant_product(node: onnx.NodeProto, initializers: Container[str]) -> bool:
    """A MatMul/Gemm of a constant by a constant (the attention's value bias carried through its
    projection): no GEMM at run time, since ORT folds it when it loads the model."""
    return node.op_type in ("MatMul", "Gemm") and node.input[0] in initializers


def weight_matmuls(proto: onnx.ModelProto) -> list[str]:
    """The MatMul/Gemm nodes that multiply by a weight (an initializer), not two activations.

    Attention's own products (scores = Q K^T, then scores V) have no weights to quantize ahead of
    time and lose the most when quantized (softmax is sharp); only the weight GEMMs, which are
    nearly all of the model's FLOPs, go to int8. A product of two constants is no GEMM either
    (:func:`is_constant_product`).
    """
    inits = {i.name: len(i.dims) for i in proto.graph.initializer}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type in ("MatMul", "Gemm")
        and len(n.input) > 1
        and not is_constant_product(n, inits)
        and inits.get(n.input[1]) == 2
    ]


def classifier_gemms(proto: onnx.ModelProto, weights: Container[str]) -> set[str]:
    """The weight GEMMs that reach ``scores`` through no other weight GEMM: the classifier.

    Walks back from the contract's output and stops at each weight GEMM it meets, so a model we
    did not make is served too, whatever its head is called and whether it is a Gemm or a MatMul.
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    found: set[str] = set()
    seen: set[str] = set()
    pending = [OUTPUT_NAME]
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in weights:
            found.add(node.name)
        else:
            pending.extend(node.input)
    return found


@contextlib.contextmanager
def _quiet_quantizer():
    root = logging.getLogger()
    advice = _DropQuantizerAdvice()
    root.addFilter(advice)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(advice)


class _ClipReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over an array of clips, with the
    length and range that its strided calibration reads the clips through."""

    def __init__(self, clips: np.ndarray, progress=None):
        self._clips = clips
        self._start = 0
        self._end = len(clips)
        self._next = 0
        self._progress = progress

    def __len__(self) -> int:
        return len(self._clips)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self._clips))
        self._next = start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        clip = self._clips[self._next : self._next + 1]
        self._next += 1
        if self._progress is not None:
            self._progress(self._next, len(self._clips))
        return {INPUT_NAME: clip}

    def rewind(self) -> None:
        self._next = self._start


def quantize_int8(
    source: Path, target: Path, calibration: np.ndarray | None = None, progress=None
) -> None:
    """int8 weights (per output channel) for the CPU's integer GEMMs (VNNI, AMX).

    Without ``calibration`` it is dynamic: each call measures its activations' range and
    quantizes them. With calibration clips it is static (QDQ): the activation ranges are measured
    once, on those clips, and stored in the model, which saves that pass on every call. Either way
    the classifier (:func:`classifier_gemms`) stays float.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    proto = onnx.load(str(source))
    # Intermediate shapes an exporter stored are hints the quantizer's own shape inference may
    # disagree with; and kept in the written file, they steer ORT's optimizer into slower forms
    # (Slices become Splits, more Transposes: 20% slower for base 8x224 here).
    del proto.graph.value_info[:]
    weights = weight_matmuls(proto)
    # The classifier stays float: one row of tokens a clip, so int8 saves nothing there, while
    # its rounding goes straight into the scores (base 8x224's lower bound, 300 clips: static int8
    # with it float flipped 10, with it quantized 12). Dynamic int8 never took a Gemm head; a
    # MatMul one now stays float too.
    head = classifier_gemms(proto, set(weights))
    weights = [name for name in weights if name not in head]
    with _quiet_quantizer():
        if calibration is None:
            quantize_dynamic(
                model_input=proto,
                model_output=str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_quantize=weights,
                per_channel=True,
            )
        else:
            quantize_static(
                proto,
                str(target),
                _ClipReader(calibration, progress),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_quantize=weights,
                per_channel=True,
                # uint8 activations times int8 weights: the form VNNI and AMX multiply.
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # Each activation's range is a high percentile of its magnitude on the
                # calibration clips, not its extreme: a few outliers no longer coarsen the step
                # for every other value (base 8x224's lower bound, 100 clips: 99% agreement against
                # MinMax's 97%, the largest error in probability 0.29 against 0.46).
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={
                    # A GEMM's float output goes straight on (bias, GELU, residual): ORT fuses
                    # each into one MatMulIntegerToFloat, with no requantization.
                    "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                    "CalibPercentile": CALIBRATION_PERCENTILE,
                    # The histograms are filled one clip at a time. Taken all at once (ORT's
                    # default), they hold every calibrated activation of every clip in memory:
                    # 16 clips of base 8x224 ran out of 24 GiB; one at a time, it peaks at 6.4 GB.
                    "CalibStridedMinMax": 1,
                },
            )
    written = onnx.load(str(target))
    if written.graph.value_info:
        del written.graph.value_info[:]
        onnx.save_model(written, str(target), save_as_external_data=False)


class _DropQuantizerAdvice(logging.Filter):
    """onnxruntime.quantization logs through the root logger that the graph is not pre-processed
    (symbolic shape inference and graph optimization); here they made the model slower, so the
    advice is noise for our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def convert_fp16(source: Path, target: Path) -> None:
    """float16 weights and arithmetic for GPUs; uint8 input and float32 scores stay as they are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto16 = convert_float_to_float16(proto, keep_io_types=True)
    onnx.save_model(proto16, str(target), save_as_external_data=False)


@dataclass(frozen=True)
class Agreement:
    """How often a reduced-precision model picks the fp32 model's top-1 class on real clips."""

    precision: str
    clips: int
    agreeing: int

    @property
    def share(self) -> float:
        return self.agreeing / self.clips if self.clips else float("nan")


AGREEMENT_WARN_BELOW = 0.98


def measure_agreement(
    precision: str,
    reference: ort.InferenceSession,
    variant: ort.InferenceSession,
    clips: np.ndarray,
    progress=None,
) -> Agreement:
    agreeing = 0
    for i in range(len(clips)):
        feed = {INPUT_NAME: clips[i : i + 1]}
        a = reference.run([OUTPUT_NAME], feed)[0].argmax(-1)
        b = variant.run([OUTPUT_NAME], feed)[0].argmax(-1)
        agreeing += int((a == b).sum())
        if progress is not None:
            progress(i + 1, len(clips))
    return Agreement(precision, len(clips), agreeing)


def write_variant(
    precision: Precision,
    verified: VerifiedExport,
    target: Path,
    *,
    metadata: dict[str, str],
    calibration: np.ndarray | None = None,
    progress=None,
) -> tuple[Parity, ModelContract, ort.InferenceSession]:
    """Convert a verified fp32 export to ``precision`` at ``target`` and measure it against torch.

    Reduced precision cannot meet the fp32 tolerance, so the difference and the top-1 agreement
    are reported rather than enforced; the contract is still checked. ``calibration`` clips make
    int8 static (see :func:`quantize_int8`).
    """
    if precision is Precision.INT8:
        quantize_int8(verified.path, target, calibration, progress)
    elif precision is Precision.FP16:
        convert_fp16(verified.path, target)
    else:
        raise ValueError(f"no conversion to {precision}")
    proto = onnx.load(str(target))
    set_metadata(proto, metadata)
    save_proto(proto, target)
    del proto
    session = open_session(target)
    batches = split_batches(len(verified.clips))
    scores = session_scores(session, verified.clips, batches)
    parity = compare(precision.value, verified.reference, scores, batches)
    contract = validate_contract(
        session,
        target,
        class_names=verified.contract.class_names,
        num_frames=verified.contract.num_frames,
        image_size=verified.contract.image_size,
        clip_seconds=verified.contract.clip_seconds,
    )
    return parity, contract, session
