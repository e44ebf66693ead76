"""epic-train end to end on a miniature layout-A dataset: run folder, resume, DDP, subcommands."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_miniature import TRAIN_COLUMNS_A, VAL_COLUMNS_A
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar

from stream.errors import EpicError
from train.callbacks import RunArtifacts
from train.cli import EpicTrainCLI, main

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["open bag", "take bag", "put bag"]
TINTS = [(90, 0, 0), (0, 90, 0), (0, 0, 90)]  # BGR: a learnable, single-frame cue is fine here
STEPS_PER_EPOCH = 3  # 2 train videos x 3 segments, batch size 2


def write_layout_a(root: Path) -> Path:
    """Folders with one segment per class between idle frames; 2 train videos, 1 val video."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "class_names.json").write_text(json.dumps({c: i for i, c in enumerate(CLASSES)}))
    for split, videos, columns in (("train", 2, TRAIN_COLUMNS_A), ("val", 1, VAL_COLUMNS_A)):
        rows = []
        for v in range(videos):
            participant = f"P{v + 1:02d}"
            video = f"{participant}_{split}"
            folder = root / split / participant / video
            folder.mkdir(parents=True)
            number = 1
            for c, tint in enumerate(TINTS):
                for _ in range(3):  # idle frames that belong to no segment
                    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
                    cv2.imwrite(str(folder / f"frame_{number:010d}.jpg"), image)
                    number += 1
                start = number
                for _ in range(8):
                    image = rng.integers(0, 120, (24, 32, 3)) + np.array(tint)
                    cv2.imwrite(str(folder / f"frame_{number:010d}.jpg"), image.astype(np.uint8))
                    number += 1
                rows.append(
                    {
                        "participant_id": participant,
                        "video_id": video,
                        "start_frame": start,
                        "stop_frame": number - 1,
                        "action_class": " " + CLASSES[c],
                    }
                )
        with (root / f"{split}_action_classes.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for i, row in enumerate(rows):
                writer.writerow({c: row.get(c, f"x{i}") for c in columns})
    return root


TINY_CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 2
  log_every_n_steps: 1
  enable_model_summary: false
model:
  preset: tiny
  arch: {{embed_dim: 32, depth: 1, num_heads: 2, patch_size: 8}}
  lr: 0.003
  warmup_epochs: 0.5
data:
  data_path: {data}
  num_frames: 4
  image_size: 16
  clip_seconds: 0.5
  fps: 8
  batch_size: 2
  num_workers: 0
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_cli")
    data = write_layout_a(root / "data")
    path = root / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(data=data))
    return path


@pytest.fixture(scope="module")
def fit_run(tiny_config, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fit_run")
    rc = main(["fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run)])
    assert rc == 0
    return run


def load_ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_fit_leaves_a_complete_run_folder(fit_run):
    metrics = json.loads((fit_run / "metrics.json").read_text())
    for key in (
        "best_val_acc",
        "best_epoch",
        "per_class_acc",
        "confusion",
        "epochs",
        "seconds",
        "best_checkpoint",
        "last_checkpoint",
        "class_names",
        "history",
        "onnx",
    ):
        assert key in metrics, key
    assert metrics["class_names"] == CLASSES
    assert list(metrics["per_class_acc"]) == CLASSES
    assert metrics["epochs"] == 2 and [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert 0.0 <= metrics["best_val_acc"] <= 1.0 and metrics["seconds"] > 0
    assert sum(map(sum, metrics["confusion"])) == len(CLASSES)  # one val clip per segment
    for picture in ("curves.png", "confusion.png"):
        assert (fit_run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = Path(metrics["best_checkpoint"])
    assert best.parent == fit_run / "checkpoints" and best.is_file()
    assert best.name.startswith("epoch") and "val_acc" in best.name
    assert (fit_run / "checkpoints" / "last.ckpt").is_file()
    assert (fit_run / "logs" / "version_0" / "config.yaml").is_file()
    with (fit_run / "logs" / "version_0" / "metrics.csv").open() as handle:
        columns = next(csv.reader(handle))
    assert "lr-Adam" in columns  # LearningRateMonitor ran with the default CSV logger


def test_fit_exports_the_best_checkpoint_to_onnx(fit_run):
    import onnx

    metrics = json.loads((fit_run / "metrics.json").read_text())
    assert metrics["onnx_error"] is None
    model = onnx.load(str(fit_run / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES
    assert float(meta["clip_seconds"]) == 0.5


def test_checkpoint_carries_what_export_needs(fit_run):
    ckpt = load_ckpt(fit_run / "checkpoints" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    assert hp["class_names"] == CLASSES
    # Linked from the data, not typed for the model.
    assert hp["clip_seconds"] == 0.5 and hp["num_frames"] == 4 and hp["image_size"] == 16
    assert list(hp["mean"]) == [0.45] * 3 and list(hp["std"]) == [0.225] * 3
    assert hp["arch"]["num_heads"] == 2 and hp["arch"]["attention_type"] == "divided_space_time"
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert ckpt["state_dict"]["model.head.weight"].shape == (len(CLASSES), 32)


def test_the_checkpoint_loader_rebuilds_the_trained_network(fit_run):
    from train.checkpoint import load_timesformer
    from train.module import VideoClassifier

    path = fit_run / "checkpoints" / "last.ckpt"
    module = VideoClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    loaded = load_timesformer(path)
    assert loaded.kind == "lightning"
    assert int(loaded.arch["num_heads"]) == 2  # from the hparams: 32 // 64 would guess wrong
    frames = torch.randint(0, 256, (2, 4, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(module.normalize(frames)), module(frames))


def test_class_count_comes_from_the_data(tiny_config):
    cli = EpicTrainCLI(
        ["--config", str(tiny_config), "--data.subset", '["put bag", "open bag"]'], run=False
    )
    assert cli.model.class_names == ["put bag", "open bag"]
    assert cli.model.model.head.out_features == 2
    # Nor can anyone type one.
    assert main(["fit", "--config", str(tiny_config), "--model.num_classes", "3"]) == 2


def test_default_callbacks(tiny_config, tmp_path):
    cli = EpicTrainCLI(
        ["--config", str(tiny_config), "--trainer.default_root_dir", str(tmp_path)], run=False
    )
    checkpoint = cli.trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint)
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val_acc", "max", True)
    assert Path(checkpoint.dirpath) == (tmp_path / "checkpoints").resolve()
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {RichProgressBar, RunArtifacts} <= kinds
    off = EpicTrainCLI(
        [
            "--config",
            str(tiny_config),
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ],
        run=False,
    )
    assert off.trainer.checkpoint_callback is None
    assert not any(isinstance(c, RichProgressBar) for c in off.trainer.callbacks)


def test_early_stopping_is_optional(tiny_config, tmp_path):
    # lr 0: val_acc never improves, so patience 1 stops after the second epoch of five.
    assert (
        main(
            [
                "fit",
                "--config",
                str(tiny_config),
                "--trainer.default_root_dir",
                str(tmp_path),
                "--early_stopping",
                "1",
                "--model.lr",
                "0",
                "--trainer.max_epochs",
                "5",
                "--artifacts.export_onnx",
                "false",
                "--artifacts.plots",
                "false",
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert not (tmp_path / "curves.png").exists()


def test_resume_from_last_continues_the_run(tiny_config, tmp_path):
    base = [
        "fit",
        "--config",
        str(tiny_config),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--artifacts.export_onnx",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main([*base, "--trainer.max_epochs", "1"]) == 0
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH

    assert main([*base, "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0
    second = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    # One more epoch's steps, not a fresh start (3) nor epoch 0 again (9).
    assert second["global_step"] == 2 * STEPS_PER_EPOCH
    assert second["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == 2
    with (tmp_path / "logs" / "version_1" / "metrics.csv").open() as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle) if row["epoch"]}
    assert epochs == {"1"}  # the resumed invocation trained epoch 1 only
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH


def test_validate_test_and_predict_run_from_a_checkpoint(fit_run, tiny_config, tmp_path, capsys):
    best = json.loads((fit_run / "metrics.json").read_text())["best_checkpoint"]
    common = [
        "--config",
        str(tiny_config),
        "--ckpt_path",
        best,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main(["validate", *common]) == 0
    assert main(["test", *common]) == 0
    out = capsys.readouterr().out
    assert "val_acc" in out and "test_acc/put bag" in out
    assert main(["predict", *common]) == 0
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(CLASSES)
    for row in rows:
        assert row["predicted"] in CLASSES
        assert sum(float(row[c]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)


def test_a_checkpoint_for_other_classes_is_a_user_error(fit_run, tiny_config, tmp_path, capsys):
    rc = main(
        [
            "validate",
            "--config",
            str(tiny_config),
            "--data.subset",
            '["open bag", "put bag"]',
            "--ckpt_path",
            str(fit_run / "checkpoints" / "last.ckpt"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("epic-train: error:") and "trained on classes" in err


def test_user_errors_print_one_line_and_debug_shows_the_traceback(tiny_config, tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    args = ["fit", "--config", str(tiny_config), "--data.data_path", str(missing)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("epic-train: error:")
    assert str(missing) in err
    with pytest.raises(EpicError):
        main([*args, "--debug"])


def test_synth_dispatches_to_train_synth(monkeypatch):
    seen = []
    fake = types.ModuleType("train.synth")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "train.synth", fake)
    assert main(["synth", "--out", "somewhere", "--seed", "3"]) == 7
    assert seen == [["--out", "somewhere", "--seed", "3"]]


def test_ddp_fit_on_two_cpu_processes(tiny_config, tmp_path):
    command = [
        sys.executable,
        "-m",
        "train",
        "fit",
        "--config",
        str(tiny_config),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.enable_progress_bar",
        "false",
        "--artifacts.export_onnx",
        "false",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "distributed_backend=gloo" in output
    assert "GLOBAL_RANK: 1" in output
    # Each process sees half the 6 training clips: 2 steps per epoch instead of 3.
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2 * 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["class_names"] == CLASSES


def test_epic_bags_config_is_the_original_experiment(tiny_config, tmp_path, capsys):
    config = str(REPO / "configs" / "epic_bags.yaml")
    data = str(tiny_config.parent / "data")
    # The user supplies the HowTo100M checkpoint; without it the error says which file is missing.
    assert (
        main(
            [
                "fit",
                "--config",
                config,
                "--data.data_path",
                data,
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("epic-train: error:") and "TimeSformer_divST_8x32_224_HowTo100M" in err

    cli = EpicTrainCLI(
        [
            "--config",
            config,
            "--data.data_path",
            data,
            "--model.checkpoint",
            "null",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    hp = cli.model.hparams
    assert hp.arch["embed_dim"] == 768 and hp.arch["depth"] == 12 and hp.arch["num_heads"] == 12
    assert (hp.num_frames, hp.image_size, hp.clip_seconds) == (8, 224, 2.0)
    assert list(hp.mean) == [0.45] * 3 and list(hp.std) == [0.225] * 3
    assert (hp.optimizer, hp.lr, hp.freeze) == ("adam", 1e-4, "none")
    assert hp.class_names == CLASSES
    assert cli.trainer.max_epochs == 50 and cli.datamodule.batch_size == 1
    assert cli.trainer.checkpoint_callback.monitor == "val_acc"
