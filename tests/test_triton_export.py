"""``epic-export --triton-repo``: every field of the config.pbtxt it writes, parsed with Triton's own
model_config proto (tritonclient), and the option combinations a server would refuse."""

from __future__ import annotations

import contextlib
import io

import pytest
from google.protobuf import text_format
from onnx_models import probe_model
from tritonclient.grpc import model_config_pb2

from export.__main__ import main
from export.triton import preferred_batch_sizes, triton_config, write_triton_repo
from stream.errors import OptionError

PB = model_config_pb2


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, PB.ModelConfig())


def config(**kwargs) -> model_config_pb2.ModelConfig:
    return parse(triton_config(name="epic", num_frames=8, image_size=224, num_classes=97, **kwargs))


def test_the_default_config_is_a_gpu_instance_with_dynamic_batching():
    cfg = config()
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == (
        "epic",
        "onnxruntime_onnx",
        "onnxruntime",
        8,
    )
    (frames,), (scores,) = cfg.input, cfg.output
    assert (frames.name, frames.data_type, list(frames.dims)) == (
        "frames",
        PB.TYPE_UINT8,
        [8, 224, 224, 3],
    )
    assert (scores.name, scores.data_type, list(scores.dims)) == ("scores", PB.TYPE_FP32, [97])
    assert scores.label_filename == "labels.txt"
    (group,) = cfg.instance_group
    assert (group.kind, group.count) == (PB.ModelInstanceGroup.KIND_GPU, 1)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert not cfg.HasField("optimization")


def test_cpu_instance_queue_delay_and_batch_sizes():
    cfg = config(instance="cpu", max_queue_delay_us=20000, max_batch_size=16)
    assert cfg.instance_group[0].kind == PB.ModelInstanceGroup.KIND_CPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 20000
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert preferred_batch_sizes(1) == [] and preferred_batch_sizes(3) == [2, 3]
    assert list(config(max_batch_size=1).dynamic_batching.preferred_batch_size) == []


def test_tensorrt_is_onnx_runtimes_gpu_accelerator_in_fp16():
    (accelerator,) = config(
        tensorrt=True
    ).optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert int(accelerator.parameters["max_workspace_size_bytes"]) == 1 << 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tensorrt": True, "instance": "cpu"}, "--triton-tensorrt needs a GPU instance"),
        ({"instance": "tpu"}, "--triton-instance must be gpu or cpu"),
        ({"max_queue_delay_us": -1}, "--triton-queue-delay-us must be >= 0"),
    ],
)
def test_impossible_combinations_are_refused(kwargs, message):
    with pytest.raises(OptionError, match=message):
        config(**kwargs)


def test_the_repository_carries_the_options(tmp_path):
    model = probe_model(tmp_path / "m.onnx", num_frames=4, image_size=16)
    model_dir = write_triton_repo(
        model,
        tmp_path / "repo",
        name="m",
        num_frames=4,
        image_size=16,
        class_names=["a", "b", "c", "d", "rest"],
        clip_seconds=0.3,
        instance="cpu",
        max_queue_delay_us=700,
        max_batch_size=4,
    )
    cfg = parse((model_dir / "config.pbtxt").read_text())
    assert cfg.instance_group[0].kind == PB.ModelInstanceGroup.KIND_CPU
    assert (cfg.max_batch_size, cfg.dynamic_batching.max_queue_delay_microseconds) == (4, 700)


def test_the_cli_refuses_tensorrt_on_a_cpu_instance_before_loading_anything(tmp_path, monkeypatch):
    import train.checkpoint

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the options were checked")

    monkeypatch.setattr(train.checkpoint, "load_timesformer", never)
    checkpoint = tmp_path / "c.pyth"
    checkpoint.write_bytes(b"")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(tmp_path / "m.onnx"),
                "--triton-repo",
                str(tmp_path / "repo"),
                "--triton-tensorrt",
                "--triton-instance",
                "cpu",
            ]
        )
    assert code == 2
    assert err.getvalue().strip().splitlines() == [
        "epic-export: error: --triton-tensorrt needs a GPU instance; drop --triton-instance cpu"
    ]
