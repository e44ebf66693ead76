"""``epic-train``: LightningCLI over VideoClassifier and EpicKitchensDataModule.

Subcommands fit, validate, test and predict take YAML configs (``configs/``) and dotted overrides
(``--trainer.max_epochs 5``). What the data knows (class names, frames per clip, frame size, clip
span) is linked into the model, so nobody types a class count. ``epic-train synth`` writes the
synthetic dataset.

A run folder is ``--trainer.default_root_dir``: checkpoints in ``checkpoints/`` (best by val_acc and
``last.ckpt``, so ``--ckpt_path last`` resumes the run), one CSV log per invocation in
``logs/version_N/`` (with the config that ran), and at the end of fit metrics.json, curves.png,
confusion.png and model.onnx (see :mod:`train.callbacks`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from pytorch_lightning.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger

from stream.errors import EpicError
from train.callbacks import PredictionWriter, RunArtifacts
from train.module import VideoClassifier

PROG = "epic-train"
DEFAULT_ROOT_DIR = "runs/train"
CHECKPOINT_DIR = "checkpoints"
DESCRIPTION = (
    "Fine-tune TimeSformer on EPIC-KITCHENS-style clips (LightningCLI). "
    "Also: `epic-train synth --out DIR` writes the synthetic dataset. "
    "`--debug` shows tracebacks for user errors."
)
log = logging.getLogger("train")


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Checkpoints sit at a fixed place in the run folder, so ``--ckpt_path last`` finds them."""
    return os.path.join(default_root_dir or os.getcwd(), CHECKPOINT_DIR)


class EpicTrainCLI(LightningCLI):
    """LightningCLI with epic-train's links, default callbacks and run-folder layout.

    ``datamodule_class`` defaults to :class:`train.data.EpicKitchensDataModule`; any DataModule
    with ``class_names``, ``num_frames``, ``image_size`` and ``clip_seconds`` fits.
    """

    def __init__(
        self, args: list[str] | None = None, *, datamodule_class: type | None = None, **kwargs: Any
    ):
        if datamodule_class is None:
            from train.data import EpicKitchensDataModule

            datamodule_class = EpicKitchensDataModule
        kwargs.setdefault("trainer_defaults", {"default_root_dir": DEFAULT_ROOT_DIR})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {"prog": PROG, "description": DESCRIPTION})
        with warnings.catch_warnings():
            # main() hands over the command line it was given; that is not a mistake here.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().__init__(
                VideoClassifier,
                datamodule_class,
                args=args,
                # The module builds its own optimizer and per-step schedule from model.*.
                auto_configure_optimizers=False,
                **kwargs,
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.num_frames", "model.num_frames")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.clip_seconds", "model.clip_seconds")

        # Arguments only: instantiate_trainer builds it, and leaves it out when
        # --trainer.enable_checkpointing false (Lightning refuses the two together).
        parser.add_class_arguments(
            ModelCheckpoint,
            "model_checkpoint",
            instantiate=False,
            fail_untyped=False,
            sub_configs=True,
        )
        parser.set_defaults(
            {
                "model_checkpoint.monitor": "val_acc",
                "model_checkpoint.mode": "max",
                "model_checkpoint.save_top_k": 1,
                "model_checkpoint.save_last": True,
                "model_checkpoint.filename": "epoch{epoch:03d}-val_acc{val_acc:.3f}",
                "model_checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments(
            "trainer.default_root_dir", "model_checkpoint.dirpath", compute_fn=checkpoint_dir
        )
        parser.add_argument(
            "--early_stopping",
            type=int | None,
            default=None,
            help="Stop when the checkpoint's monitor (val_acc) has not improved for this many"
            " validations. Default: off.",
        )
        parser.add_lightning_class_args(RunArtifacts, "artifacts")

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={})
        root = config.get("default_root_dir") or os.getcwd()
        logger = config.get("logger")
        if logger is None or logger is True:
            # One CSV log per invocation: a resumed run keeps the first run's log beside its own.
            kwargs.setdefault("logger", CSVLogger(save_dir=root, name="logs"))
            logger = kwargs["logger"]
        callbacks = list(config.get("callbacks") or [])
        checkpointing = self._get(self.config_init, "model_checkpoint")
        if config.get("enable_checkpointing") is not False:
            callbacks.append(ModelCheckpoint(**checkpointing.as_dict()))
        if self.subcommand == "fit":
            patience = self._get(self.config_init, "early_stopping")
            if patience:
                callbacks.append(
                    EarlyStopping(
                        monitor=checkpointing.monitor, mode=checkpointing.mode, patience=patience
                    )
                )
            if logger:
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter())
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        kwargs.setdefault("callbacks", callbacks)
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        artifacts = next((c for c in self.trainer.callbacks if isinstance(c, RunArtifacts)), None)
        metrics = getattr(artifacts, "metrics", None)
        if not metrics:
            return
        acc = metrics["best_val_acc"]
        best = f"{acc:.3f} (epoch {metrics['best_epoch'] + 1})" if acc is not None else "n/a"
        epochs = metrics["epochs"]
        print(
            f"{PROG}: best val_acc {best} after {epochs} epoch{'s' * (epochs != 1)} in"
            f" {metrics['seconds']:.0f} s; run folder {self.trainer.default_root_dir}"
            + (" (no model.onnx, see the error above)" if metrics["onnx_error"] else "")
        )


def _setup_logging() -> None:
    if any(getattr(h, "_epic_train", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._epic_train = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run ``epic-train``; returns the exit status (user errors: one line on stderr, non-zero)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _setup_logging()
    try:
        if argv[:1] == ["synth"]:
            from train.synth import main as synth_main

            return synth_main(argv[1:])
        EpicTrainCLI(argv)
    except EpicError as e:
        if debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:  # argument errors and --help: the parser has already said why
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0
