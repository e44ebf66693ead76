"""Runtime: contract validation through create_session, provider choice, and the Runner."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx_models import classifier_model, decode_probe, matmul_model, probe_model

from stream import runtime
from stream.errors import ContractError, ModelError, ProviderError
from stream.runtime import PROVIDERS, Device, Runner, create_session, default_cache_dir


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


CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# This machine's truth, declared rather than probed (a probe would be the code under test): no
# working GPU unless EPIC_TEST_GPU=1 says the machine has one with its CUDA/TensorRT libraries.
HAS_WORKING_GPU = os.environ.get("EPIC_TEST_GPU") == "1"


class FakeProviders:
    """onnxruntime as a GPU machine shows it, on the CPU: every provider is listed, and each
    behaves as told: "works", "falls back" (ORT quietly runs on the CPU instead: the session
    reports the CPU first), "fails to open", or "fails to run" (opens, but its warm-up raises).

    Sessions are real CPU sessions underneath, so the contract check and the runs are real.
    """

    def __init__(self, monkeypatch, **behaviour: str) -> None:
        self.behaviour = behaviour  # provider name -> behaviour; the CPU always works
        self.opened: list[list] = []  # the providers argument of every session opened
        real = ort.InferenceSession
        fake = self

        class Session:
            def __init__(self, path, sess_options=None, providers=(), **kwargs):
                fake.opened.append(list(providers))
                first = providers[0] if isinstance(providers[0], str) else providers[0][0]
                how = fake.behaviour.get(first, "works")
                if how == "fails to open":
                    raise RuntimeError(f"{first}: libcudart.so.12: cannot open shared object file")
                self._real = real(path, sess_options=sess_options, providers=[CPU])
                self._first = CPU if how == "falls back" else first
                self._fails = how == "fails to run"

            def get_providers(self):
                return [self._first] if self._first == CPU else [self._first, CPU]

            def run(self, *args, **kwargs):
                if self._fails:
                    raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
                return self._real.run(*args, **kwargs)

            def run_with_iobinding(self, *args, **kwargs):
                if self._fails:
                    raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
                return self._real.run_with_iobinding(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(self._real, name)

        monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
        monkeypatch.setattr(ort, "InferenceSession", Session)

    def first_providers(self) -> list[str]:
        return [p if isinstance(p, str) else p[0] for p in (opened[0] for opened in self.opened)]


@pytest.fixture
def model(tmp_path):
    return classifier_model(tmp_path / "m.onnx")


def test_auto_takes_the_first_provider_that_works(model, monkeypatch, tmp_path):
    fake = FakeProviders(monkeypatch)
    session, contract, provider = create_session(model, "auto", cache_dir=tmp_path / "cache")
    assert provider == TRT == session.get_providers()[0]
    assert contract.class_names == ("cut", "stir", "wash")
    assert fake.first_providers() == [TRT]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("falls back", "not usable on this machine"),
        ("fails to run", "warm-up run failed: CUDA failure 100"),
        ("fails to open", "libcudart.so.12"),
    ],
)
def test_auto_skips_a_gpu_provider_that_does_not_really_work(
    model, monkeypatch, caplog, tmp_path, behaviour, reason
):
    fake = FakeProviders(monkeypatch, **{TRT: behaviour, CUDA: behaviour})
    with caplog.at_level(logging.INFO, logger="stream.runtime"):
        session, _, provider = create_session(model, "auto", cache_dir=tmp_path / "cache")
    assert provider == CPU == session.get_providers()[0]
    assert TRT in fake.first_providers() and CUDA in fake.first_providers()
    assert f"{TRT}: " in caplog.text and f"{CUDA}: " in caplog.text and reason in caplog.text


def test_auto_keeps_cuda_when_only_tensorrt_fails(model, monkeypatch, tmp_path):
    FakeProviders(monkeypatch, **{TRT: "fails to run"})
    _, _, provider = create_session(model, "auto", cache_dir=tmp_path / "cache")
    assert provider == CUDA


@pytest.mark.parametrize("device", [Device.CUDA, Device.TENSORRT])
@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("falls back", "not usable on this machine"), ("fails to run", "warm-up run failed")],
)
def test_forcing_a_provider_that_does_not_work_says_why_in_one_line(
    model, monkeypatch, tmp_path, device, behaviour, reason
):
    FakeProviders(monkeypatch, **{PROVIDERS[device]: behaviour})
    with pytest.raises(ProviderError) as info:
        create_session(model, device, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert f"--device {device.value} cannot be used here" in message and reason in message
    assert "--device auto or cpu" in message and "\n" not in message


def test_this_machine_has_the_outcome_it_declares(model):
    """The real onnxruntime, no fakes: auto ends on the CPU and forcing a GPU says why, unless
    EPIC_TEST_GPU=1 declares a working GPU, where both must really run on it."""
    _, _, provider = create_session(model, "auto")
    for device in (Device.CUDA, Device.TENSORRT):
        if HAS_WORKING_GPU:
            assert create_session(model, device)[2] == PROVIDERS[device]
        else:
            with pytest.raises(ProviderError, match=f"--device {device.value}"):
                create_session(model, device)
    assert provider == (TRT if HAS_WORKING_GPU else CPU)


def test_tensorrt_engines_are_cached_where_asked_and_a_build_is_announced(
    model, monkeypatch, caplog, tmp_path
):
    fake = FakeProviders(monkeypatch)
    cache = tmp_path / "engines"
    create_session(model, "tensorrt", cache_dir=cache)
    _, options = fake.opened[0][0]
    folder = Path(options["trt_engine_cache_path"])
    assert options["trt_engine_cache_enable"] == "True" and folder.parent == cache
    assert folder.name.startswith("m-")
    assert options["trt_timing_cache_path"] == str(cache)
    assert "building the TensorRT engine for m.onnx" in caplog.text
    assert "takes minutes" in caplog.text and str(folder) in caplog.text

    # Once the folder holds an engine for this model, a start says nothing about building.
    caplog.clear()
    folder.mkdir(parents=True)
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_main_0_0_sm90.engine").write_bytes(b"x")
    create_session(model, "auto", cache_dir=cache)
    assert "building" not in caplog.text
    assert Path(fake.opened[-1][0][1]["trt_engine_cache_path"]) == folder

    # Another model (or this one changed) has no engine yet.
    other = classifier_model(tmp_path / "other.onnx")
    create_session(other, "tensorrt", cache_dir=cache)
    assert "building the TensorRT engine for other.onnx" in caplog.text


def test_the_engine_cache_defaults_to_the_users_cache_folder(model, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "epic-stream" / "tensorrt"
    fake = FakeProviders(monkeypatch)
    create_session(model, "tensorrt")
    folder = Path(fake.opened[0][0][1]["trt_engine_cache_path"])
    assert folder.parent == tmp_path / "xdg" / "epic-stream" / "tensorrt"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "epic-stream" / "tensorrt"


def test_cache_dir_reaches_the_session_from_the_command_line(tmp_path, make_video, monkeypatch):
    from stream.__main__ import main

    seen = {}
    real = runtime.create_session

    def spy(path, device, threads, cache_dir=None):
        seen["cache_dir"] = cache_dir
        return real(path, "cpu", threads, cache_dir=cache_dir)

    monkeypatch.setattr("stream.pipeline.create_session", spy)
    video = str(make_video(frames=3))
    model = str(classifier_model(tmp_path / "cli.onnx"))
    cache = tmp_path / "my cache"
    argv = ["--source", video, "--model", model, "--no-display", "--cache-dir", str(cache)]
    assert main(argv) == 0
    assert seen["cache_dir"] == cache


@pytest.mark.parametrize("io_binding", [False, True])
def test_runner_feeds_the_clip_buffer_to_the_model(tmp_path, io_binding):
    session, contract, provider = create_session(
        probe_model(tmp_path / "p.onnx", num_frames=3), "cpu"
    )
    runner = Runner(session, contract, provider, io_binding=io_binding)
    assert runner.uses_io_binding is io_binding
    assert runner.clip.shape == (1, 3, 16, 16, 3) and runner.clip.dtype == np.uint8
    for levels in ([10, 20, 30], [200, 100, 0]):
        for t, level in enumerate(levels):
            runner.clip[0, t] = level  # in place, as the scheduler's gather does
        scores, ms = runner.timed_run()
        assert scores.shape == (1, 4)
        assert np.allclose(decode_probe(scores[0], 3), levels, atol=1e-3)
        assert ms >= 0


@pytest.mark.parametrize("io_binding", [False, True])
def test_runner_runs_the_first_n_clips_of_its_batch_buffer(tmp_path, io_binding):
    session, contract, provider = create_session(
        probe_model(tmp_path / "p.onnx", num_frames=3), "cpu"
    )
    runner = Runner(session, contract, provider, max_batch=4, io_binding=io_binding)
    assert runner.clip.shape == (4, 3, 16, 16, 3)
    rows = [[10, 20, 30], [200, 100, 0], [5, 5, 250], [77, 88, 99]]
    for row, levels in enumerate(rows):
        for t, level in enumerate(levels):
            runner.clip[row, t] = level
    for n in (1, 3, 4, 2):  # each size of batch, bound once and reused
        scores = runner.run(n)
        assert scores.shape == (n, 4)
        for row in range(n):
            assert np.allclose(decode_probe(scores[row], 3), rows[row], atol=1e-3)
    with pytest.raises(ValueError, match="1 to 4"):
        runner.run(5)


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
