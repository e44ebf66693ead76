"""RunArtifacts and the plots, without the CLI: fake fits on random clips, a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.image import imread
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from train.callbacks import RunArtifacts
from train.module import VideoClassifier
from train.plots import draw_confusion, draw_curves

NAMES = ["a", "b", "c"]


def tiny() -> VideoClassifier:
    return VideoClassifier(
        NAMES,
        preset="tiny",
        arch={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8},
        num_frames=2,
        image_size=16,
    )


def loader(labels: list[int]) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (len(labels), 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    return DataLoader(TensorDataset(frames, torch.tensor(labels)), batch_size=2)


def trainer(root, *callbacks, epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def test_plots_are_images_of_the_history(tmp_path):
    history = [
        {"epoch": 0, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.4, "val_acc": None},
        {"epoch": 1, "train_loss": 0.6, "val_loss": 0.9, "train_acc": 0.7, "val_acc": 0.6},
    ]
    curves = imread(draw_curves(history, tmp_path / "curves.png"))
    assert curves.ndim == 3 and curves.shape[1] > curves.shape[0]  # two panels side by side
    confusion = imread(
        draw_confusion([[3, 1, 0], [0, 2, 2], [0, 0, 0]], NAMES, tmp_path / "confusion.png")
    )
    assert confusion.ndim == 3 and np.ptp(confusion) > 0


def test_fit_without_export_writes_metrics_plots_and_absent_classes_as_null(tmp_path):
    pl.seed_everything(0)
    artifacts = RunArtifacts(export_onnx=False)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="val_acc", mode="max", save_last=True
    )
    fit = trainer(tmp_path, artifacts, checkpoint)
    fit.fit(tiny(), loader([0, 1, 2, 0, 1, 2]), loader([0, 1, 0, 1]))  # no "c" in validation
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["per_class_acc"]["c"] is None
    assert metrics["per_class_acc"]["a"] is not None
    assert metrics["epochs"] == 2 and metrics["global_step"] == 6
    assert metrics["onnx"] is None and metrics["onnx_error"] is None
    assert metrics["best_checkpoint"] == checkpoint.best_model_path
    vals = [h["val_acc"] for h in metrics["history"]]
    assert metrics["best_val_acc"] == max(vals)
    assert metrics["best_epoch"] == vals.index(max(vals))
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "confusion.png").is_file()
    assert not (tmp_path / "model.onnx").exists()


def test_history_and_seconds_survive_a_checkpoint_round_trip():
    before = RunArtifacts()
    before.history = [{"epoch": 0, "val_acc": 0.5}]
    before.best_report = {"epoch": 0, "val_acc": 0.5, "per_class_acc": {}, "confusion": []}
    before._seconds_before = 12.0
    after = RunArtifacts()
    after.load_state_dict(before.state_dict())
    assert after.history == before.history and after.best_report == before.best_report
    assert after.seconds() == 12.0


def test_a_failed_export_says_why_and_leaves_no_stale_model(tmp_path, caplog):
    # A checkpoint the export cannot read stands in for any export failure.
    artifacts = RunArtifacts()
    output = tmp_path / "model.onnx"
    output.write_text("stale model from an earlier run")
    broken = tmp_path / "broken.ckpt"
    broken.write_text("not a checkpoint")
    path, why = artifacts._export(str(broken), output)
    assert path is None and "broken.ckpt" in why
    assert "model.onnx not written" in caplog.text
    assert not output.exists()


def test_an_export_py_in_the_working_folder_cannot_replace_ours(tmp_path, monkeypatch):
    """`python -m export` would run ./export.py: the user's file, not the project's export."""
    monkeypatch.chdir(tmp_path)
    hijacked = tmp_path / "hijacked"
    (tmp_path / "export.py").write_text(
        f"import pathlib\npathlib.Path({str(hijacked)!r}).write_text('ran')\n"
    )
    (tmp_path / "export").mkdir()  # nor may a package of that name
    (tmp_path / "export" / "__main__.py").write_text((tmp_path / "export.py").read_text())
    broken = tmp_path / "broken.ckpt"
    broken.write_text("not a checkpoint")
    path, why = RunArtifacts()._export(str(broken), tmp_path / "model.onnx")
    assert not hijacked.exists()
    # Our export ran: it read the checkpoint and said what is wrong with it.
    assert path is None and "cannot be read as a PyTorch checkpoint" in why
