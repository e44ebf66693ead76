"""The LightningModule: TimeSformer behind the contract's uint8 front, trained as a classifier.

``VideoClassifier`` takes the same input the exported ONNX graph takes (uint8 BGR clips
``[B, T, S, S, 3]``) and runs them through :class:`~train.normalize.FrameNormalizer` first, so the
network is trained on exactly the arithmetic it is served with.

Its hyperparameters are everything needed to rebuild it and to export it: the class names, the
clip's span in seconds, mean and std, and the fully resolved architecture (so a checkpoint never
depends on what a preset meant on the day it was written).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from stream.errors import OptionError
from train.model import PRESETS, AttentionType, TimeSformer, build_timesformer
from train.normalize import REFERENCE_MEAN, REFERENCE_STD, FrameNormalizer

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("cosine", "constant")
# TimeSformer arguments that the module owns itself rather than taking from ``arch``.
_OWN_ARGS = {"img_size", "num_frames", "num_classes", "norm_layer", "act_layer"}
# What a pretrained checkpoint's architecture leaves open (load_timesformer's keywords).
PRETRAINED_OVERRIDES = ("num_heads", "attention_type", "drop_path_rate")
ARCH_KEYS = tuple(p for p in inspect.signature(TimeSformer).parameters if p not in _OWN_ARGS)


def resolve_arch(preset: str, arch: dict | None) -> dict:
    """Preset + overrides -> every architecture argument spelled out (JSON-friendly values)."""
    if preset not in PRESETS:
        raise OptionError(f"model.preset {preset!r} is unknown; choose one of {sorted(PRESETS)}")
    arch = dict(arch or {})
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise OptionError(
            f"model.arch has unknown keys {unknown}; the TimeSformer takes {list(ARCH_KEYS)}"
            " (num_frames, image_size and the class count are set elsewhere)"
        )
    defaults = {
        name: p.default
        for name, p in inspect.signature(TimeSformer).parameters.items()
        if name in ARCH_KEYS
    }
    resolved = {**defaults, **PRESETS[preset], **arch}
    try:  # an enum is not YAML: hparams must survive a round trip through config.yaml
        resolved["attention_type"] = AttentionType(resolved["attention_type"]).value
    except ValueError:
        raise OptionError(
            f"model.arch.attention_type {resolved['attention_type']!r} is unknown; use one of"
            f" {[a.value for a in AttentionType]}"
        ) from None
    return resolved


def parse_freeze(freeze: str) -> int | None:
    """'none' -> 0 blocks, 'head' -> None (everything but the head), 'blocks:N' -> N."""
    if freeze == "none":
        return 0
    if freeze == "head":
        return None
    prefix, _, count = freeze.partition(":")
    if prefix == "blocks" and count.isdigit():
        return int(count)
    raise OptionError(
        f"model.freeze {freeze!r} is not understood; use 'none', 'head' (train the head only) or"
        " 'blocks:N' (freeze the patch embedding and the first N blocks)"
    )


def cosine_with_warmup(warmup_steps: int, total_steps: float):
    """LR factor per optimizer step: linear warmup from ~0, then cosine to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if not math.isfinite(total_steps) or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class VideoClassifier(pl.LightningModule):
    """TimeSformer fine-tuning on uint8 BGR clips.

    Args:
        class_names: the classes, in label order. Comes from the data (``data.class_names``).
        preset: TimeSformer size, one of ``train.model.PRESETS`` (tiny, small, base).
        arch: overrides of the preset's TimeSformer arguments, e.g. ``{embed_dim: 128, depth: 4,
            num_heads: 4, patch_size: 16, time_embed_std: 1.0, drop_path_rate: 0.1}``.
        checkpoint: TimeSformer weights to start from (.pyth, state dict, Lightning ckpt or timm
            ViT); embeddings are resized to ``num_frames``/``image_size`` and the head is reset to
            the class count. None: start from scratch.
        num_frames: frames per clip (T). Linked from the data.
        image_size: frame side in pixels (S). Linked from the data.
        clip_seconds: source time a clip spans. Linked from the data; exported as metadata.
        mean: RGB mean for normalisation, on the 0..1 scale.
        std: RGB std for normalisation, on the 0..1 scale.
        optimizer: "adam" or "adamw".
        lr: peak learning rate.
        weight_decay: weight decay (not applied to biases, norms and embeddings).
        schedule: "cosine" (per-step cosine to 0 after warmup) or "constant" (after warmup).
        warmup_epochs: epochs of linear warmup (fractions allowed).
        label_smoothing: cross-entropy label smoothing.
        freeze: "none", "head" (train the head only) or "blocks:N" (freeze the patch embedding,
            the position/time embeddings and the first N blocks).
    """

    def __init__(
        self,
        class_names: Sequence[str] = (),
        preset: str = "base",
        arch: dict | None = None,
        checkpoint: str | None = None,
        num_frames: int = 8,
        image_size: int = 224,
        clip_seconds: float = 2.0,
        mean: Sequence[float] = REFERENCE_MEAN,
        std: Sequence[float] = REFERENCE_STD,
        optimizer: str = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        freeze: str = "none",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) < 2:
            raise OptionError(
                f"the model needs at least 2 class names, got {self.class_names}; they come from the"
                " data (class_names.json or the class folders)"
            )
        if optimizer not in OPTIMIZERS:
            raise OptionError(
                f"model.optimizer {optimizer!r} is unknown; use one of {list(OPTIMIZERS)}"
            )
        if schedule not in SCHEDULES:
            raise OptionError(
                f"model.schedule {schedule!r} is unknown; use one of {list(SCHEDULES)}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise OptionError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        frozen_blocks = parse_freeze(freeze)

        self.normalize = FrameNormalizer(mean, std)
        num_classes = len(self.class_names)
        if checkpoint:
            self.model, resolved = self._load_pretrained(checkpoint, preset, arch, num_classes)
        else:
            resolved = resolve_arch(preset, arch)
            self.model = build_timesformer(
                preset,
                img_size=image_size,
                num_frames=num_frames,
                num_classes=num_classes,
                **resolved,
            )
        # The checkpoint's hparams rebuild the network without its starting weights (the state
        # dict carries the trained ones): a ckpt must load even where the .pyth is gone.
        self.hparams["arch"] = resolved
        self.hparams["checkpoint"] = None
        self.hparams["class_names"] = self.class_names
        self.hparams["mean"] = list(self.normalize.mean)
        self.hparams["std"] = list(self.normalize.std)
        self.initialized_from = checkpoint
        self._frozen = self._freeze(frozen_blocks)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_class_acc = MulticlassAccuracy(num_classes, average=None)
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        # The last completed validation epoch: what RunArtifacts reports per class.
        self.val_report: dict | None = None

    def _load_pretrained(self, path: str, preset: str, arch: dict | None, num_classes: int):
        """The checkpoint's TimeSformer, embeddings resized and head reset; its resolved arch."""
        from train.checkpoint import load_timesformer

        if not Path(path).expanduser().is_file():
            raise OptionError(
                f"model.checkpoint {path}: file not found; point it at TimeSformer weights"
                " (.pyth, .pth state dict, Lightning .ckpt or a timm ViT) or set it to null to"
                " train from scratch"
            )
        path = str(Path(path).expanduser())
        arch = dict(arch or {})
        fixed = sorted(set(arch) - set(PRETRAINED_OVERRIDES))
        if fixed:
            raise OptionError(
                f"model.arch sets {fixed}, but with model.checkpoint the architecture comes from"
                f" the checkpoint; only {list(PRETRAINED_OVERRIDES)} can be overridden"
            )
        hp = self.hparams
        # load_timesformer reports missing and unexpected weights itself.
        loaded = load_timesformer(
            path,
            num_classes=num_classes,
            num_frames=hp.num_frames,
            image_size=hp.image_size,
            **arch,
        )
        from_ckpt = {k: v for k, v in dict(loaded.arch).items() if k in ARCH_KEYS}
        log.info(
            "starting from %s (%s checkpoint), head reset to %d classes",
            path,
            loaded.kind,
            num_classes,
        )
        return loaded.model, resolve_arch(preset, {**from_ckpt, **arch})

    def _freeze(self, frozen_blocks: int | None) -> list[nn.Module]:
        m = self.model
        if frozen_blocks == 0:
            return []
        if frozen_blocks is None:
            frozen = [c for name, c in m.named_children() if name != "head"]
            params = [p for name, p in m.named_parameters() if not name.startswith("head.")]
        else:
            if frozen_blocks > len(m.blocks):
                raise OptionError(
                    f"model.freeze blocks:{frozen_blocks} is more than the model's"
                    f" {len(m.blocks)} blocks"
                )
            frozen = [m.patch_embed, *m.blocks[:frozen_blocks]]
            params = [p for mod in frozen for p in mod.parameters()]
            params += [p for name, p in m.named_parameters(recurse=False)]  # cls/pos/time embeds
        for p in params:
            p.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True):
        # Frozen parts run as in inference (no dropout or drop-path): they are fixed features.
        super().train(mode)
        for module in getattr(self, "_frozen", ()):
            module.eval()
        return self

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 BGR [B, T, S, S, 3] -> logits [B, num_classes]."""
        return self.model(self.normalize(frames))

    def _step(self, batch, stage: str) -> torch.Tensor:
        frames, labels = batch
        logits = self(frames)
        loss = F.cross_entropy(
            logits,
            labels,
            label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0,
        )
        acc = getattr(self, f"{stage}_acc")
        acc(logits, labels)
        on_step = stage == "train"
        self.log(
            f"{stage}_loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=labels.shape[0],
        )
        self.log(
            f"{stage}_acc",
            acc,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=labels.shape[0],
        )
        if stage != "train":
            getattr(self, f"{stage}_class_acc").update(logits, labels)
            getattr(self, f"{stage}_confusion").update(logits, labels)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Class probabilities [B, num_classes], like the exported model's ``scores``."""
        frames = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(frames).softmax(dim=-1)

    def _class_report(self, stage: str) -> dict:
        """Per-class accuracy (None for classes absent from the split) and the confusion matrix."""
        class_acc = getattr(self, f"{stage}_class_acc")
        confusion = getattr(self, f"{stage}_confusion")
        per_class = class_acc.compute().tolist()
        matrix = confusion.compute().long()
        support = matrix.sum(dim=1).tolist()
        class_acc.reset()
        confusion.reset()
        return {
            "per_class_acc": {
                name: (acc if n > 0 else None)
                for name, acc, n in zip(self.class_names, per_class, support, strict=True)
            },
            "confusion": matrix.tolist(),
        }

    def on_validation_epoch_end(self) -> None:
        report = self._class_report("val")  # every rank: compute() syncs across processes
        if not self.trainer.sanity_checking:
            self.val_report = {"epoch": self.current_epoch, **report}

    def on_test_epoch_end(self) -> None:
        report = self._class_report("test")
        for name, acc in report["per_class_acc"].items():
            if acc is not None:
                self.log(f"test_acc/{name}", acc, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups_weight_decay(
            self.model,
            weight_decay=hp.weight_decay,
            no_weight_decay_list=self.model.no_weight_decay(),
        )
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise OptionError(f"model.freeze {hp.freeze!r} leaves nothing to train")
        optimizer = OPTIMIZERS[hp.optimizer](groups, lr=hp.lr)
        total = float(self.trainer.estimated_stepping_batches)  # also sets up the train data
        batches = self.trainer.num_training_batches
        warmup = 0
        if math.isfinite(batches):  # an iterable dataset of unknown length gets no warmup
            warmup = round(hp.warmup_epochs * batches / self.trainer.accumulate_grad_batches)
        if hp.schedule == "constant":
            total = math.inf
        scheduler = LambdaLR(optimizer, cosine_with_warmup(warmup, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.initialized_from:
            checkpoint["initialized_from"] = str(self.initialized_from)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved is not None and list(saved) != self.class_names:
            raise OptionError(
                f"the checkpoint was trained on classes {list(saved)} but the data has"
                f" {self.class_names}; use the data it was trained on (same class_names.json)"
            )
