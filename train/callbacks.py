"""RunArtifacts: what a finished fit leaves in its run folder for people and for epic-stream.

At the end of fit (global rank 0 only) the run folder (``trainer.default_root_dir``) gets:

* ``metrics.json``: best_val_acc and its epoch, per-class accuracy by class name, epochs, seconds,
  the best and last checkpoint paths, class_names, the per-epoch history, the ONNX path;
* ``curves.png``: loss and accuracy per epoch, train and val;
* ``confusion.png``: the validation confusion matrix of the best epoch;
* ``model.onnx``: the best checkpoint exported by export's CLI in a subprocess (train/ must not
  import export/, which imports train/), started so that the working folder is not on its path.

The history lives in the callback, not in a logger's files, and is saved in every checkpoint, so a
run resumed with ``--ckpt_path last`` reports all its epochs, and it works with no logger at all.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback

from train.plots import draw_confusion, draw_curves

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion.png"
ONNX_FILE = "model.onnx"
# The repository (or site-packages) holding this train/: the export subprocess must import the
# export/ that sits next to it, whatever the working directory.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# What the export subprocess runs instead of `python -m export`: -m puts the working folder first
# on sys.path, so a user's own export.py there would run in place of ours. -c puts it there as ""
# (none under PYTHONSAFEPATH); this drops it and puts our root first. `python -P` does the same,
# but only from Python 3.11.
_EXPORT_MAIN = (
    "import sys; root = sys.argv.pop(1); "
    "sys.path[:] = [root, *(p for p in sys.path if p not in ('', root))]; "
    "from export.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class RunArtifacts(Callback):
    """Collect per-epoch metrics during fit; write the run folder's artifacts when it ends.

    Args:
        export_onnx: export the best checkpoint to ``model.onnx`` at the end of fit.
        plots: draw ``curves.png`` and ``confusion.png``.
        export_timeout: seconds the export subprocess may take.
    """

    def __init__(
        self, export_onnx: bool = True, plots: bool = True, export_timeout: float = 1800.0
    ):
        self.export_onnx = export_onnx
        self.plots = plots
        self.export_timeout = export_timeout
        self.history: list[dict] = []
        self.best_report: dict | None = None  # val report of the best val_acc epoch
        self.last_report: dict | None = None
        self._seconds_before = 0.0  # training time of earlier (resumed-from) runs
        self._started: float | None = None

    # ---- collection -------------------------------------------------------------------------
    def _row(self, epoch: int) -> dict:
        for row in self.history:
            if row["epoch"] == epoch:
                return row
        row = {"epoch": epoch}
        self.history.append(row)
        self.history.sort(key=lambda r: r["epoch"])
        return row

    def seconds(self) -> float:
        running = time.monotonic() - self._started if self._started is not None else 0.0
        return self._seconds_before + running

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        row = self._row(trainer.current_epoch)
        row["val_loss"] = _number(metrics.get("val_loss"))
        row["val_acc"] = _number(metrics.get("val_acc"))
        report = getattr(pl_module, "val_report", None)
        if report is None or report.get("epoch") != trainer.current_epoch:
            return
        report = {**report, "val_acc": row["val_acc"]}
        self.last_report = report
        best = self.best_report
        if row["val_acc"] is not None and (best is None or row["val_acc"] > best["val_acc"]):
            self.best_report = report

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = self._row(trainer.current_epoch)
        row["train_loss"] = _number(metrics.get("train_loss_epoch", metrics.get("train_loss")))
        row["train_acc"] = _number(metrics.get("train_acc"))
        if trainer.optimizers:
            row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        row["seconds"] = round(self.seconds(), 2)

    # ---- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "history": self.history,
            "best_report": self.best_report,
            "last_report": self.last_report,
            "seconds": self.seconds(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.best_report = state_dict.get("best_report")
        self.last_report = state_dict.get("last_report")
        self._seconds_before = float(state_dict.get("seconds", 0.0))

    # ---- the run folder ---------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        class_names = list(getattr(pl_module, "class_names", []))
        ckpt = trainer.checkpoint_callback
        best_ckpt = getattr(ckpt, "best_model_path", "") or None
        last_ckpt = getattr(ckpt, "last_model_path", "") or None

        onnx_path = onnx_error = None
        source = best_ckpt or last_ckpt
        if self.export_onnx and source:
            onnx_path, onnx_error = self._export(source, run_dir / ONNX_FILE)
        elif self.export_onnx:
            (run_dir / ONNX_FILE).unlink(missing_ok=True)
            onnx_error = "no checkpoint was saved (is checkpointing off?)"
            log.error("model.onnx not written: %s", onnx_error)

        best = self.best_report
        report = best or self.last_report
        metrics = {
            "best_val_acc": best["val_acc"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "per_class_acc": report["per_class_acc"] if report else None,
            "confusion": report["confusion"] if report else None,
            "epochs": len({row["epoch"] for row in self.history if "train_loss" in row}),
            "global_step": trainer.global_step,
            "seconds": round(self.seconds(), 2),
            "best_checkpoint": best_ckpt,
            "best_checkpoint_score": _number(getattr(ckpt, "best_model_score", None)),
            "checkpoint_monitor": getattr(ckpt, "monitor", None),
            "last_checkpoint": last_ckpt,
            "onnx": str(onnx_path) if onnx_path else None,
            "onnx_error": onnx_error,
            "class_names": class_names,
            "history": self.history,
        }
        (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")

        if self.plots:
            draw_curves(self.history, run_dir / CURVES_FILE)
            if report:
                draw_confusion(
                    report["confusion"],
                    class_names,
                    run_dir / CONFUSION_FILE,
                    title=f"Validation confusion matrix, epoch {report['epoch'] + 1}"
                    f" (val acc {report['val_acc'] or 0:.3f})",
                )
        self.metrics = metrics
        log.info("run folder %s: %s", run_dir, ", ".join(sorted(p.name for p in run_dir.iterdir())))

    def _export(self, checkpoint: str, output: Path) -> tuple[Path | None, str | None]:
        """Run the export CLI on ``checkpoint``; on failure say why and carry on (fit succeeded)."""
        # An earlier run's model must not pass for this one's if this export fails.
        output.unlink(missing_ok=True)
        arguments = ["--checkpoint", str(checkpoint), "--output", str(output)]
        command = [sys.executable, "-c", _EXPORT_MAIN, str(_PACKAGE_ROOT), *arguments]
        log.info("exporting %s -> %s", checkpoint, output)
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self.export_timeout, check=False
            )
        except subprocess.TimeoutExpired:
            why = f"the export took longer than {self.export_timeout:.0f} s"
        else:
            if done.returncode == 0 and output.is_file():
                return output, None
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            why = lines[-1] if lines else f"exit status {done.returncode}"
            if done.returncode == 0:
                why = f"the export exited 0 but wrote no {output.name}"
        log.error(
            "model.onnx not written: %s. The checkpoints are fine; export by hand with: %s",
            why,
            " ".join(["epic-export", *arguments]),
        )
        return None, why


class PredictionWriter(BasePredictionWriter):
    """``predict`` writes ``predictions.csv`` into the run folder: one row per clip.

    Columns: ``index`` (the clip's index in the predict dataset), ``predicted`` (class name),
    ``score`` (its probability), then one probability column per class. Under DDP each process
    writes its own share to ``predictions-rank<N>.csv``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices
    ) -> None:
        class_names = list(pl_module.class_names)
        # Indices come per dataloader; predictions too unless there is only one dataloader.
        if predictions and isinstance(predictions[0], list):
            predictions = predictions[0]
        batch_indices = batch_indices[0] if batch_indices and batch_indices[0] else None
        if batch_indices is None:  # not a DataLoader Lightning could wrap: count in order
            starts = [0]
            for probs in predictions[:-1]:
                starts.append(starts[-1] + len(probs))
            batch_indices = [range(s, s + len(p)) for s, p in zip(starts, predictions, strict=True)]
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        name = (
            PREDICTIONS_FILE
            if trainer.world_size == 1
            else f"predictions-rank{trainer.global_rank}.csv"
        )
        self.path = run_dir / name
        rows = []
        for probs, indices in zip(predictions, batch_indices, strict=True):
            probs = torch.as_tensor(probs).float().cpu()
            for index, p in zip(indices, probs.tolist(), strict=True):
                best = max(range(len(p)), key=p.__getitem__)
                rows.append([index, class_names[best], f"{p[best]:.6f}", *(f"{v:.6f}" for v in p)])
        with self.path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "predicted", "score", *class_names])
            writer.writerows(sorted(rows))
        log.info("wrote %d predictions to %s", len(rows), self.path)
