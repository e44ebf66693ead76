"""Runtime: contract validation through create_session, provider choice, and the Runner."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx_models import classifier_model, decode_probe, matmul_model, probe_model

from stream.errors import ContractError, ModelError, ProviderError
from stream.runtime import Device, Runner, create_session


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"input_name": "video"}, "no input named 'frames'"),
        ({"input_type": TensorProto.FLOAT}, "must be uint8"),
        ({"input_shape": ["batch", 4, 16, 16]}, "rank 5"),
        ({"input_shape": ["batch", 4, 16, 16, 1]}, "3 colour channels"),
        ({"output_name": "logits"}, "no output named 'scores'"),
        ({"class_names": None, "num_classes": 3}, "'class_names' is missing"),
        ({"class_names": ("a", "b"), "num_classes": 3}, "has 2 names but output"),
        ({"metadata": {"class_names": '{"0": "a"}'}}, "JSON list of strings"),
        ({"metadata": {"clip_seconds": "nan"}}, "clip_seconds must be a finite number"),
        ({"metadata": {"clip_seconds": "0.0"}}, "clip_seconds must be a finite number"),
        ({"metadata": {"num_frames": "-2"}, "input_shape": ["b", "t", 16, 16, 3]}, "at least 1"),
        ({"metadata": {"num_frames": "8"}}, "num_frames=8 contradicts"),
    ],
)
def test_contract_breaks_are_named(tmp_path, kwargs, needle):
    path = classifier_model(tmp_path / "broken.onnx", **kwargs)
    with pytest.raises(ContractError, match=needle) as info:
        create_session(path, "cpu")
    assert str(path) in str(info.value)


def test_missing_and_non_onnx_models(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        create_session(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        create_session(junk)
    with pytest.raises(ModelError, match="folder"):
        create_session(tmp_path)


def test_a_single_frame_model_may_span_no_time(tmp_path):
    path = classifier_model(tmp_path / "m.onnx", num_frames=1, clip_seconds=0.0)
    _, contract, _ = create_session(path, "cpu")
    assert (contract.num_frames, contract.clip_seconds) == (1, 0.0)


def test_missing_clip_seconds_falls_back_to_consecutive_frames(tmp_path, caplog):
    path = classifier_model(tmp_path / "m.onnx", clip_seconds=None)
    _, contract, _ = create_session(path, "cpu")
    assert contract.clip_seconds is None
    assert "clip_seconds' is missing" in caplog.text


def test_auto_keeps_only_a_provider_that_really_works(tmp_path):
    path = classifier_model(tmp_path / "m.onnx")
    session, contract, provider = create_session(path, "auto")
    assert provider == session.get_providers()[0]
    assert contract.class_names == ("cut", "stir", "wash")
    if "CUDAExecutionProvider" not in provider and "Tensorrt" not in provider:
        assert provider == "CPUExecutionProvider"


@pytest.mark.parametrize("device", [Device.CUDA, Device.TENSORRT])
def test_forcing_a_gpu_provider_works_or_says_why(tmp_path, device):
    path = classifier_model(tmp_path / "m.onnx")
    try:
        session, _, provider = create_session(path, device)
    except ProviderError as exc:  # no GPU, or no CUDA/TensorRT libraries (this machine)
        message = str(exc)
        assert f"--device {device.value}" in message and "--device auto or cpu" in message
        assert "\n" not in message
    else:  # a machine with a working GPU
        assert provider == session.get_providers()[0]
        assert device.value in provider.lower()


def test_an_unknown_device_is_refused(tmp_path):
    with pytest.raises(ProviderError, match="must be one of"):
        create_session(classifier_model(tmp_path / "m.onnx"), "tpu")


@pytest.mark.parametrize("io_binding", [False, True])
def test_runner_feeds_the_clip_buffer_to_the_model(tmp_path, io_binding):
    session, contract, provider = create_session(probe_model(tmp_path / "p.onnx", num_frames=3), "cpu")
    runner = Runner(session, contract, provider, io_binding=io_binding)
    assert runner.uses_io_binding is io_binding
    assert runner.clip.shape == (1, 3, 16, 16, 3) and runner.clip.dtype == np.uint8
    for levels in ([10, 20, 30], [200, 100, 0]):
        for t, level in enumerate(levels):
            runner.clip[0, t] = level  # in place, as the worker's gather does
        scores, ms = runner.timed_run()
        assert np.allclose(decode_probe(scores, 3), levels, atol=1e-3)
        assert ms >= 0


def test_cancel_aborts_later_runs(tmp_path):
    session, contract, provider = create_session(matmul_model(tmp_path / "m.onnx", depth=1), "cpu")
    runner = Runner(session, contract, provider)
    runner.run()
    runner.cancel()
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own untyped error
        runner.run()


def test_matmul_model_meets_the_contract(tmp_path):
    path = matmul_model(tmp_path / "m.onnx", size=32, depth=4, class_names=("x", "y"))
    _, contract, _ = create_session(path, "cpu")
    assert contract.class_names == ("x", "y") and contract.clip_seconds == 1.0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"frames": np.zeros((1, 4, 16, 16, 3), np.uint8)})[0]
    assert scores.shape == (1, 2) and np.isclose(scores.sum(), 1.0)
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == ["x", "y"]
