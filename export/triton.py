"""A Triton Inference Server model repository for a contract model (ONNX Runtime backend).

Triton serves many camera streams from one GPU server: each client (``epic-stream --server``)
sends the same uint8 BGR clips it would feed its local session, and the dynamic batcher merges the
requests of every client into executions of up to ``max_batch_size`` clips. docs/triton.md
explains every field of the ``config.pbtxt`` written here.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from stream.contract import INPUT_NAME, OUTPUT_NAME
from stream.errors import OptionError, OutputError

LABELS_FILE = "labels.txt"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 5000  # a clip waits at most 5 ms for others to batch with


class InstanceKind(str, Enum):
    """``--triton-instance``: where the model's instance runs on the server."""

    GPU = "gpu"  # KIND_GPU: one instance on each of the server's GPUs
    CPU = "cpu"  # KIND_CPU: a CPU-only server (Triton refuses KIND_GPU without a GPU)


def check_triton_options(
    instance: InstanceKind | str, tensorrt: bool, max_queue_delay_us: int
) -> InstanceKind:
    """Raise :class:`OptionError` for a combination the server would refuse; the instance kind."""
    try:
        instance = InstanceKind(instance)
    except ValueError:
        raise OptionError(f"--triton-instance must be gpu or cpu, got {instance!r}") from None
    if tensorrt and instance is not InstanceKind.GPU:
        raise OptionError("--triton-tensorrt needs a GPU instance; drop --triton-instance cpu")
    if max_queue_delay_us < 0:
        raise OptionError(f"--triton-queue-delay-us must be >= 0, got {max_queue_delay_us}")
    return instance


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes the dynamic batcher aims for: half the maximum and the maximum (8 -> 4, 8)."""
    if max_batch_size < 2:
        return []
    return sorted({max(2, max_batch_size // 2), max_batch_size})


def check_model_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise OptionError(
            f"--name {name!r} cannot be a Triton model name; use letters, digits, '_', '-' and '.'"
        )
    return name


def triton_config(
    *,
    name: str,
    num_frames: int,
    image_size: int,
    num_classes: int,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance: InstanceKind | str = InstanceKind.GPU,
    tensorrt: bool = False,
    comment: str = "",
) -> str:
    """config.pbtxt text: the contract's tensors as Triton sees them (the batch axis is implicit),
    the instance group, the dynamic batcher and, with ``tensorrt``, ONNX Runtime's TensorRT
    execution accelerator in fp16."""
    instance = check_triton_options(instance, tensorrt, max_queue_delay_us)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    preferred = preferred_batch_sizes(max_batch_size)
    preferred_line = (
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
    )
    accelerator = (
        """optimization {
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
  }
}
"""
        if tensorrt
        else ""
    )
    return f"""{header}name: "{name}"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ {num_frames}, {image_size}, {image_size}, 3 ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]
instance_group [
  {{
    kind: KIND_{instance.name}
    count: 1
  }}
]
dynamic_batching {{
{preferred_line}  max_queue_delay_microseconds: {max_queue_delay_us}
}}
{accelerator}"""


def write_triton_repo(
    model_path: Path,
    repo_dir: Path,
    *,
    name: str,
    num_frames: int,
    image_size: int,
    class_names: Sequence[str],
    clip_seconds: float,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance: InstanceKind | str = InstanceKind.GPU,
    tensorrt: bool = False,
) -> Path:
    """Write ``repo_dir/name/{config.pbtxt, labels.txt, 1/model.onnx}``; returns the model folder."""
    check_model_name(name)
    if max_batch_size < 1:
        raise OptionError(f"the Triton max batch size must be at least 1, got {max_batch_size}")
    model_dir = Path(repo_dir) / name
    comment = (
        f"epic-stream model contract: {num_frames} uint8 BGR frames of {image_size}x{image_size}, "
        f"oldest first,\nspanning {clip_seconds:g} s of source time; scores are softmax "
        f"probabilities over {len(class_names)} classes."
    )
    config = triton_config(
        name=name,
        num_frames=num_frames,
        image_size=image_size,
        num_classes=len(class_names),
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instance=instance,
        tensorrt=tensorrt,
        comment=comment,
    )
    try:
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, model_dir / "1" / "model.onnx")
        (model_dir / LABELS_FILE).write_text(
            "".join(f"{n}\n" for n in class_names), encoding="utf-8"
        )
        (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    except OSError as exc:
        raise OutputError(
            f"cannot write the Triton repository {model_dir}: {exc.strerror or exc}"
        ) from None
    return model_dir
