"""A Triton Inference Server model repository for a contract model (ONNX Runtime backend).

Triton serves many camera streams from one GPU server: each client sends the same uint8 BGR
clips it would feed epic-stream's local session, and dynamic batching groups them.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from stream.contract import INPUT_NAME, OUTPUT_NAME
from stream.errors import OptionError, OutputError

LABELS_FILE = "labels.txt"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_model_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise OptionError(
            f"--name {name!r} cannot be a Triton model name; use letters, digits, '_', '-' and '.'"
        )
    return name


def triton_config(
    *, name: str, num_frames: int, image_size: int, num_classes: int, max_batch_size: int = 8,
    max_queue_delay_us: int = 5000, comment: str = "",
) -> str:
    """config.pbtxt text: the contract's tensors as Triton sees them (the batch axis is implicit)."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
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
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
"""


def write_triton_repo(
    model_path: Path,
    repo_dir: Path,
    *,
    name: str,
    num_frames: int,
    image_size: int,
    class_names: Sequence[str],
    clip_seconds: float,
    max_batch_size: int = 8,
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
        name=name, num_frames=num_frames, image_size=image_size, num_classes=len(class_names),
        max_batch_size=max_batch_size, comment=comment,
    )
    try:
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, model_dir / "1" / "model.onnx")
        (model_dir / LABELS_FILE).write_text("".join(f"{n}\n" for n in class_names), encoding="utf-8")
        (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the Triton repository {model_dir}: {exc.strerror or exc}") from None
    return model_dir
