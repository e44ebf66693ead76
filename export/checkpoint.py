"""A checkpoint file to a verified contract ONNX file: what ``epic-export`` does.

Everything the contract needs that the weights do not say comes from, in order: the command's
flags, what the checkpoint stored (epic-train keeps class_names, clip_seconds, mean and std in
its Lightning hyper_parameters; an official .pyth's config may hold mean and std), and last the
reference's values, with a warning whenever a value is guessed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from export import onnx as onnx_export
from export.calibration import DEFAULT_CLIPS, find_sources, sample_clips
from export.errors import ExportError
from export.names import (
    check_class_names,
    generic_class_names,
    names_from_value,
    read_class_names,
)
from export.onnx import DEFAULT_OPSET, Agreement, GraphInfo, Parity, Precision
from export.triton import (
    DEFAULT_QUEUE_DELAY_US,
    InstanceKind,
    check_model_name,
    check_triton_options,
    write_triton_repo,
)
from stream.contract import ModelContract
from stream.errors import OptionError
from train.normalize import REFERENCE_MEAN, REFERENCE_STD

log = logging.getLogger(__name__)

# The reference (TimeSformer's datasets/decoder.py: get_start_end_idx, then temporal_sampling)
# takes a window of NUM_FRAMES * SAMPLING_RATE frames of TARGET_FPS video and spreads the
# NUM_FRAMES samples over it with linspace from its first frame to its last: a clip spans
# (NUM_FRAMES * SAMPLING_RATE - 1) / TARGET_FPS seconds, 255 / 30 = 8.5 s for the 8x32 models.
# An official checkpoint's stored cfg says SAMPLING_RATE and TARGET_FPS; without it, the released
# models' values are assumed (8x32, 16x16 and 96x4 at 30 fps; other T: the 256-frame window).
REFERENCE_FPS = 30.0
REFERENCE_SAMPLING_RATES = {8: 32, 16: 16, 96: 4}
REFERENCE_WINDOW_FRAMES = 256

Step = Callable[[str], AbstractContextManager]
Progress = Callable[[str, int, int], None]  # (what, done, total)


def reference_clip_seconds(
    num_frames: int, sampling_rate: float | None = None, target_fps: float | None = None
) -> float:
    """Seconds from a reference clip's first frame to its last; None: the reference's value."""
    if sampling_rate is None:
        sampling_rate = REFERENCE_SAMPLING_RATES.get(
            num_frames, REFERENCE_WINDOW_FRAMES / num_frames
        )
    return (num_frames * sampling_rate - 1) / (target_fps or REFERENCE_FPS)


def _positive(value: Any) -> float | None:
    """A stored config's number if it is one above 0; None (use the reference's) otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


@dataclass(frozen=True)
class ExportReport:
    """What was written and what the checks measured."""

    checkpoint: Path
    kind: str
    arch: dict[str, Any]
    output: Path
    precision: Precision
    graph: GraphInfo
    contract: ModelContract
    sources: dict[str, str]  # where class names, clip span and mean/std came from
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    parity: tuple[Parity, ...]  # fp32 against torch first, then the written precision if not fp32
    ms_per_clip: dict[str, float]  # precision -> ONNX Runtime CPU ms per batch-1 clip (median)
    seconds: float
    triton_dir: Path | None = None
    agreement: Agreement | None = None  # int8 vs fp32 top-1 on the calibration clips
    warnings: tuple[str, ...] = ()


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    """One value or one per RGB channel, as flags, hparams or a .pyth config give them."""
    try:
        values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be one number or three (R G B), got {value!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise OptionError(f"{what} must be one number or three (R G B), got {len(values)} numbers")
    if what.endswith("std") and any(v <= 0 for v in values):
        raise OptionError(f"{what} must be positive, got {values}")
    return values[0], values[1], values[2]


def _describe(
    checkpoint: Path, kind: str, arch: dict, mean, std, opset: int, precision: Precision
) -> str:
    attention = getattr(arch["attention_type"], "value", arch["attention_type"])
    return (
        f"TimeSformer {attention} (embed {arch['embed_dim']}, depth {arch['depth']}, "
        f"heads {arch['num_heads']}, patch {arch['patch_size']}), {arch['num_frames']}x"
        f"{arch['img_size']}, {arch['num_classes']} classes; from {checkpoint.name} ({kind}); "
        f"mean {list(mean)} std {list(std)}; {precision.value}; epic-export with torch "
        f"{torch.__version__.split('+')[0]}, onnxruntime {ort.__version__}, opset {opset}"
    )


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    class_names_file: str | Path | None = None,
    num_frames: int | None = None,
    image_size: int | None = None,
    num_heads: int | None = None,
    clip_seconds: float | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    opset: int = DEFAULT_OPSET,
    precision: Precision | str = Precision.FP32,
    triton_repo: str | Path | None = None,
    name: str | None = None,
    triton_max_batch_size: int = 8,
    triton_instance: InstanceKind | str = InstanceKind.GPU,
    triton_tensorrt: bool = False,
    triton_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    check_clips: int = 3,
    timing_runs: int = 5,
    calibration: str | Path | None = None,
    calibration_clips: int = DEFAULT_CLIPS,
    step: Step | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Load ``checkpoint``, export it to ``output`` in ``precision``, check it, report.

    Quick failures come first (option values, output folders, the names file) so that a mistake
    costs seconds, not a base-model export. ``step(message)`` wraps each long step (the CLI shows
    a spinner); ``check_clips`` random clips (at least 3: batch 1, then batches of 2) compare ONNX
    Runtime with torch. ``calibration`` (a folder of videos or frame folders) makes int8 static:
    ``calibration_clips`` clips sampled from it set the activation ranges, and the int8 model's
    top-1 agreement with fp32 on them is measured and reported (a warning below 98%).
    ``progress(what, done, total)`` follows the steps that go clip by clip.
    """
    from train.checkpoint import load_timesformer  # the train extra: only needed here

    started = time.perf_counter()
    step = step or (lambda _message: contextlib.nullcontext())
    notes: list[str] = []

    def warn(message: str) -> None:
        notes.append(message)
        log.warning(message)

    checkpoint, output = Path(checkpoint), Path(output)
    precision = Precision(precision)
    onnx_export.check_opset(opset)
    for flag, value in (
        ("--num-frames", num_frames),
        ("--image-size", image_size),
        ("--num-heads", num_heads),
    ):
        if value is not None and value < 1:
            raise OptionError(f"{flag} must be a positive integer, got {value}")
    if clip_seconds is not None and clip_seconds < 0:
        raise OptionError(f"--clip-seconds must not be negative, got {clip_seconds}")
    flag_mean = _triple(mean, "--mean") if mean is not None else None
    flag_std = _triple(std, "--std") if std is not None else None
    if check_clips < 3:
        raise OptionError(
            f"--check-clips must be at least 3 (batch 1, then batch 2), got {check_clips}"
        )
    footage = None  # the calibration videos and frame folders
    if calibration is not None:
        if precision is not Precision.INT8:
            raise OptionError(
                "--calibration sets the ranges of static int8; add --int8 (or leave "
                "--calibration out)"
            )
        if calibration_clips < 1:
            raise OptionError(f"--calibration-clips must be at least 1, got {calibration_clips}")
        footage = find_sources(calibration)  # a wrong folder fails now, not after the export
    if timing_runs < 1:
        raise OptionError(f"--timing-runs must be at least 1, got {timing_runs}")
    if triton_max_batch_size < 1:
        raise OptionError(f"--triton-max-batch must be at least 1, got {triton_max_batch_size}")
    if name is not None and triton_repo is None:
        raise OptionError("--name names the model in a Triton repository; give --triton-repo too")
    onnx_export.check_writable(output)
    if triton_repo is not None:
        check_triton_options(triton_instance, triton_tensorrt, triton_queue_delay_us)
        name = check_model_name(name or output.stem)
        onnx_export.check_writable(Path(triton_repo) / name / "1" / "model.onnx", "Triton model")
    names = read_class_names(class_names_file) if class_names_file is not None else None

    with step(f"Loading {checkpoint.name}"):
        loaded = load_timesformer(
            checkpoint, num_frames=num_frames, image_size=image_size, num_heads=num_heads
        )
    arch, hparams = loaded.arch, loaded.hparams
    num_classes, frames, size = (
        int(arch["num_classes"]),
        int(arch["num_frames"]),
        int(arch["img_size"]),
    )
    if num_classes < 1:
        raise ExportError(
            f"{checkpoint}: the model has no classification head, so no scores to export"
        )
    if loaded.missing_keys:
        # Weights the checkpoint lacks would be served at their random init.
        shown = ", ".join(loaded.missing_keys[:4]) + (
            " ..." if len(loaded.missing_keys) > 4 else ""
        )
        raise ExportError(
            f"{checkpoint} ({loaded.kind}) lacks {len(loaded.missing_keys)} of the model's weights "
            f"({shown}); export a fine-tuned TimeSformer checkpoint, e.g. epic-train's best .ckpt"
        )

    sources: dict[str, str] = {}
    if names is not None:
        check_class_names(names, num_classes, str(class_names_file))
        sources["class_names"] = str(class_names_file)
    elif hparams.get("class_names"):
        where = f"{checkpoint} (stored class_names)"
        names = names_from_value(hparams["class_names"], where)
        check_class_names(names, num_classes, where)
        sources["class_names"] = "checkpoint"
    else:
        names = generic_class_names(num_classes)
        sources["class_names"] = "generic"
        warn(
            f"{checkpoint.name} stores no class names: using class_0 .. class_{num_classes - 1}; "
            "give --class-names FILE to name them"
        )

    stored_clip = hparams.get("clip_seconds")
    if clip_seconds is not None:
        span = float(clip_seconds)
        sources["clip_seconds"] = "--clip-seconds"
        if stored_clip is not None and abs(float(stored_clip) - span) > 1e-6:
            warn(
                f"--clip-seconds {span:g} overrides the {float(stored_clip):g} s the model was trained with"
            )
    elif stored_clip is not None:
        span = float(stored_clip)
        sources["clip_seconds"] = "checkpoint"
    elif (rate := _positive(hparams.get("sampling_rate"))) is not None:
        # An official checkpoint's cfg: the reference's sampling, with its own numbers.
        span = reference_clip_seconds(frames, rate, _positive(hparams.get("target_fps")))
        sources["clip_seconds"] = "checkpoint config"
    else:
        span = reference_clip_seconds(frames)
        sources["clip_seconds"] = "reference guess"
        window = round(span * REFERENCE_FPS) + 1
        warn(
            f"{checkpoint.name} does not say how much time a clip spans: assuming the reference's "
            f"sampling, {frames} frames spread over {window} frames of {REFERENCE_FPS:g} fps "
            f"video, {span:.3g} s from first to last; give --clip-seconds to set it"
        )

    if flag_mean is not None or flag_std is not None:
        sources["normalization"] = "--mean/--std"
    elif hparams.get("mean") or hparams.get("std"):
        sources["normalization"] = "checkpoint"
    else:
        sources["normalization"] = "reference"
    stored_mean, stored_std = hparams.get("mean"), hparams.get("std")
    use_mean = flag_mean or (_triple(stored_mean, "stored mean") if stored_mean else REFERENCE_MEAN)
    use_std = flag_std or (_triple(stored_std, "stored std") if stored_std else REFERENCE_STD)

    description = _describe(checkpoint, loaded.kind, arch, use_mean, use_std, opset, precision)
    metadata = onnx_export.contract_metadata(
        class_names=names,
        clip_seconds=span,
        num_frames=frames,
        image_size=size,
        mean=use_mean,
        std=use_std,
        description=description,
    )
    kind = loaded.kind
    contract_model = onnx_export.prepare_model(loaded.model, use_mean, use_std, copy_model=False)
    del loaded

    parity: list[Parity] = []
    timings: dict[str, float] = {}
    agreement: Agreement | None = None
    progress = progress or (lambda _what, _done, _total: None)
    with onnx_export.staged(output) as final, onnx_export.scratch(output, "-fp32") as fp32_path:
        target = final if precision is Precision.FP32 else fp32_path
        with step(f"Exporting to ONNX opset {opset} and checking against torch"):
            verified = onnx_export.write_verified(
                contract_model,
                target,
                metadata=metadata,
                class_names=names,
                num_frames=frames,
                image_size=size,
                clip_seconds=span,
                opset=opset,
                check_clips=check_clips,
            )
        parity.append(verified.parity)
        contract = verified.contract
        with step("Timing ONNX Runtime (CPU)"):
            timings["fp32"] = onnx_export.time_session(
                verified.session, verified.clips[0], runs=timing_runs, warm_up=False
            )
        clips = None
        if footage is not None:
            with step(f"Sampling {calibration_clips} calibration clips from {calibration}"):
                clips = sample_clips(
                    footage,
                    count=calibration_clips,
                    num_frames=frames,
                    image_size=size,
                    clip_seconds=span,
                    progress=lambda done, total: progress("sampling clips", done, total),
                )
        if precision is not Precision.FP32:
            how = "static, calibrating" if clips is not None else precision.value
            with step(f"Converting to {how} and comparing with torch"):
                variant_parity, contract, session = onnx_export.write_variant(
                    precision,
                    verified,
                    final,
                    metadata=metadata,
                    calibration=clips,
                    progress=lambda done, total: progress("calibrating", done, total),
                )
            parity.append(variant_parity)
            if clips is not None:
                with step("Comparing int8 with fp32 on the calibration clips"):
                    agreement = onnx_export.measure_agreement(
                        "int8",
                        verified.session,
                        session,
                        clips,
                        progress=lambda done, total: progress("int8 vs fp32", done, total),
                    )
                if agreement.share < onnx_export.AGREEMENT_WARN_BELOW:
                    warn(
                        f"int8 picks fp32's top-1 class on only {agreement.agreeing} of "
                        f"{agreement.clips} calibration clips ({agreement.share:.1%}, below "
                        f"{onnx_export.AGREEMENT_WARN_BELOW:.0%}): check the clips are like what "
                        "the model will see, or use the fp32 model"
                    )
            with step(f"Timing ONNX Runtime (CPU, {precision.value})"):
                timings[precision.value] = onnx_export.time_session(
                    session, verified.clips[0], runs=timing_runs, warm_up=False
                )

    triton_dir = None
    if triton_repo is not None:
        with step("Writing the Triton model repository"):
            triton_dir = write_triton_repo(
                output,
                Path(triton_repo),
                name=name,
                num_frames=frames,
                image_size=size,
                class_names=names,
                clip_seconds=span,
                max_batch_size=triton_max_batch_size,
                instance=triton_instance,
                tensorrt=triton_tensorrt,
                max_queue_delay_us=triton_queue_delay_us,
            )

    return ExportReport(
        checkpoint=checkpoint,
        kind=kind,
        arch=dict(arch),
        output=output,
        precision=precision,
        graph=onnx_export.describe_onnx(output),
        contract=contract,
        sources=sources,
        mean=tuple(use_mean),
        std=tuple(use_std),
        parity=tuple(parity),
        ms_per_clip=timings,
        seconds=time.perf_counter() - started,
        triton_dir=triton_dir,
        agreement=agreement,
        warnings=tuple(notes),
    )
