"""epic-export end to end on small checkpoints: defaults from the checkpoint, int8, Triton, errors."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.__main__ import main
from export.checkpoint import export_checkpoint, reference_clip_seconds
from export.onnx import Precision
from export.wrapper import ContractModel
from stream.contract import load_contract
from train.checkpoint import CheckpointError
from train.model import TimeSformer

CFG = {
    "img_size": 32,
    "patch_size": 16,
    "num_frames": 4,
    "num_classes": 5,
    "embed_dim": 128,
    "depth": 1,
    "num_heads": 2,
    "drop_path_rate": 0.0,
}
NAMES = ["open bag", "take bag", "put bag", "close bag", "wave"]


def small_timesformer(seed: int = 0) -> TimeSformer:
    torch.manual_seed(seed)
    model = TimeSformer(**CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def save_pyth(model: TimeSformer, path, cfg: str | None = None):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    stored = {"epoch": 15, "model_state": state}
    if cfg is not None:  # some official checkpoints store their yacs cfg as YAML
        stored["cfg"] = cfg
    torch.save(stored, path)
    return path


def save_lightning_ckpt(model: TimeSformer, path, **hparams):
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"lr": 1e-4, **hparams},
        },
        path,
    )
    return path


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pyth(tmp_path_factory):
    return save_pyth(small_timesformer(), tmp_path_factory.mktemp("ckpt") / "small.pyth")


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory):
    """One --int8 --triton-repo export of an epic-train style .ckpt, shared by the tests below."""
    root = tmp_path_factory.mktemp("ckpt_run")
    model = small_timesformer(seed=1)
    ckpt = save_lightning_ckpt(
        model,
        root / "best.ckpt",
        class_names=NAMES,
        clip_seconds=2.25,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        num_frames=4,
    )
    out_dir = root / "out"
    code, stdout, stderr = run(
        [
            "--checkpoint",
            str(ckpt),
            "--output",
            str(out_dir / "model.onnx"),
            "--int8",
            "--triton-repo",
            str(root / "repo"),
            "--name",
            "epic",
        ]
    )
    return {
        "root": root,
        "model": model,
        "code": code,
        "stdout": stdout,
        "stderr": stderr,
        "output": out_dir / "model.onnx",
        "repo": root / "repo",
    }


def test_ckpt_export_succeeds_and_prints_the_report(ckpt_run):
    assert ckpt_run["code"] == 0, ckpt_run["stderr"]
    table = ckpt_run["stdout"]
    for text in (
        "opset",
        "frames uint8 [batch, 4, 32, 32, 3]",
        "scores float32 [batch, 5]",
        "ORT vs torch fp32",
        "ORT vs torch int8",
        "ms/clip",
        "model.onnx",
    ):
        assert text in table, text
    # Only the model is left in the output folder: no fp32 intermediate, no probe files.
    assert [p.name for p in ckpt_run["output"].parent.iterdir()] == ["model.onnx"]


def test_ckpt_class_names_clip_span_and_normalization_come_from_the_checkpoint(ckpt_run):
    contract = load_contract(ckpt_run["output"])
    assert contract.class_names == tuple(NAMES)
    assert contract.clip_seconds == 2.25
    assert (contract.num_frames, contract.image_size) == (4, 32)
    meta = {p.key: p.value for p in onnx.load(str(ckpt_run["output"])).metadata_props}
    assert json.loads(meta["mean"]) == [0.5] * 3 and json.loads(meta["std"]) == [0.25] * 3
    assert "best.ckpt (lightning)" in contract.description and "int8" in contract.description


def test_int8_output_is_quantized_and_close_to_torch(ckpt_run):
    proto = onnx.load(str(ckpt_run["output"]))
    assert onnx.TensorProto.INT8 in {t.data_type for t in proto.graph.initializer}
    frames = np.random.default_rng(5).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(ckpt_run["output"]), providers=["CPUExecutionProvider"])
    got = session.run(["scores"], {"frames": frames})[0]
    with torch.inference_mode():
        want = ContractModel(ckpt_run["model"], (0.5,) * 3, (0.25,) * 3)(torch.from_numpy(frames))
    assert np.abs(got - want.numpy()).max() < 0.05


def test_triton_repository_holds_the_output_and_a_parsable_config(ckpt_run):
    model_dir = ckpt_run["repo"] / "epic"
    assert (model_dir / "1" / "model.onnx").read_bytes() == ckpt_run["output"].read_bytes()
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "epic" and config.max_batch_size == 8
    assert list(config.input[0].dims) == [4, 32, 32, 3]
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.output[0].dims) == [5]
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32


def test_pyth_without_names_gets_generic_names_reference_span_and_a_warning(pyth, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    report = export_checkpoint(
        pyth, tmp_path / "m.onnx", num_frames=6, mean=[0.5], precision="fp32", timing_runs=1
    )
    assert report.contract.class_names == tuple(f"class_{i}" for i in range(5))
    assert report.contract.num_frames == 6
    assert report.contract.clip_seconds == pytest.approx(reference_clip_seconds(6))
    assert report.sources == {
        "class_names": "generic",
        "clip_seconds": "reference guess",
        "normalization": "--mean/--std",
    }
    assert report.mean == (0.5,) * 3 and report.std == (0.225,) * 3
    assert report.precision is Precision.FP32 and len(report.parity) == 1
    assert report.parity[0].max_abs_diff < 1e-4 and report.parity[0].batches == (1, 2)
    assert "fp32" in report.ms_per_clip
    logged = caplog.text
    assert "stores no class names" in logged and "--class-names" in logged
    assert "does not say how much time a clip spans" in logged
    assert "6 frames spread over 256 frames of 30 fps video, 8.5 s" in logged


@pytest.mark.parametrize(
    ("frames", "seconds"),
    [(8, 255 / 30), (16, 255 / 30), (96, 383 / 30), (6, 255 / 30)],
)
def test_the_reference_span_is_linspace_over_its_sampling_window(frames, seconds):
    """decoder.py: frames NUM_FRAMES * SAMPLING_RATE apart at TARGET_FPS, linspace from the
    window's first frame to its last: 8x32 spans 255 frames of 30 fps video, 8.5 s (not 7.47)."""
    assert reference_clip_seconds(frames) == pytest.approx(seconds)
    assert reference_clip_seconds(8) == pytest.approx(8.5)
    assert reference_clip_seconds(4, 8, 15) == pytest.approx(31 / 15)


def test_a_pyth_config_gives_the_clip_span_without_a_guess(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cfg = "DATA:\n  NUM_FRAMES: 4\n  SAMPLING_RATE: 8\n  TARGET_FPS: 15\n  TEST_CROP_SIZE: 32\n"
    pyth = save_pyth(small_timesformer(), tmp_path / "cfg.pyth", cfg=cfg)
    report = export_checkpoint(pyth, tmp_path / "m.onnx", timing_runs=1)
    assert report.contract.clip_seconds == pytest.approx((4 * 8 - 1) / 15)
    assert report.sources["clip_seconds"] == "checkpoint config"
    assert "how much time a clip spans" not in caplog.text


def test_flags_win_over_what_the_checkpoint_stored(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    ckpt = save_lightning_ckpt(
        small_timesformer(),
        tmp_path / "best.ckpt",
        class_names=NAMES,
        clip_seconds=2.25,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    names = tmp_path / "class_names.json"
    names.write_text(json.dumps({f"verb {i}": i for i in range(5)}))
    report = export_checkpoint(
        ckpt,
        tmp_path / "m.onnx",
        class_names_file=names,
        clip_seconds=3.0,
        std=0.3,
        num_heads=4,
        timing_runs=1,
    )
    assert report.arch["num_heads"] == 4
    assert report.contract.class_names == tuple(f"verb {i}" for i in range(5))
    assert report.contract.clip_seconds == 3.0
    assert report.mean == (0.5,) * 3 and report.std == (0.3,) * 3
    assert "--clip-seconds 3 overrides the 2.25 s the model was trained with" in caplog.text


# Errors: one line on stderr, a non-zero exit, and nothing written.


def one_line_error(code: int, stderr: str) -> str:
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("epic-export: error: ")
    return lines[0]


def test_names_file_of_the_wrong_length(pyth, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    out = tmp_path / "m.onnx"
    line = one_line_error(
        *run(["--checkpoint", str(pyth), "--output", str(out), "--class-names", str(names)])[::2]
    )
    assert "has 3 class names but the model's head has 5 classes" in line
    assert not out.exists()


def test_stored_names_of_the_wrong_length(tmp_path):
    ckpt = save_lightning_ckpt(small_timesformer(), tmp_path / "x.ckpt", class_names=["a", "b"])
    line = one_line_error(
        *run(["--checkpoint", str(ckpt), "--output", str(tmp_path / "m.onnx")])[::2]
    )
    assert "stored class_names" in line and "has 2 class names" in line


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_a_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pyth"
    if content is None:
        torch.save({"epoch": 1, "notes": "no weights here"}, path)
    else:
        path.write_bytes(content)
    line = one_line_error(
        *run(["--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])[::2]
    )
    assert "weights.pyth" in line
    assert "cannot be read as a PyTorch checkpoint" in line or "no model weights found" in line


def test_a_checkpoint_missing_weights_is_refused(tmp_path):
    state = {
        f"model.{k}": v
        for k, v in small_timesformer().state_dict().items()
        if not k.startswith("norm.")
    }
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    line = one_line_error(
        *run(["--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])[::2]
    )
    assert "lacks 2 of the model's weights (norm.weight, norm.bias)" in line


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "weights.pyth"
    path.write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        run(["--checkpoint", str(path), "--output", str(tmp_path / "m.onnx"), "--debug"])


def test_unwritable_output_fails_before_the_checkpoint_is_read(pyth, tmp_path, monkeypatch):
    import train.checkpoint

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output was checked")

    monkeypatch.setattr(train.checkpoint, "load_timesformer", never)
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(
        *run(["--checkpoint", str(pyth), "--output", str(blocker / "m.onnx")])[::2]
    )
    assert "cannot create the folder" in line
    line = one_line_error(
        *run(
            [
                "--checkpoint",
                str(pyth),
                "--output",
                str(tmp_path / "m.onnx"),
                "--triton-repo",
                str(blocker),
            ]
        )[::2]
    )
    assert "Triton model" in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--opset", "16"], "17 or newer"),
        (["--opset", "21"], "up to 20"),
        (["--name", "epic"], "give --triton-repo too"),
        (["--check-clips", "2"], "at least 3"),
        (["--std", "0.2", "0"], "one number or three"),
        (["--std", "0"], "must be positive"),
        (["--clip-seconds", "-1"], "must not be negative"),
        (["--num-heads", "3"], "does not divide"),
        (["--triton-repo", "r", "--name", "a/b"], "Triton model name"),
    ],
)
def test_option_errors(pyth, tmp_path, extra, message):
    argv = ["--checkpoint", str(pyth), "--output", str(tmp_path / "m.onnx"), *extra]
    assert message in one_line_error(*run(argv)[::2])


def test_fp16_and_int8_are_exclusive(pyth, tmp_path):
    with pytest.raises(SystemExit):
        run(["--checkpoint", str(pyth), "--output", str(tmp_path / "m.onnx"), "--fp16", "--int8"])
