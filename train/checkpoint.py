"""Loading TimeSformer weights: official .pyth, plain state dicts, our Lightning .ckpt, timm ViT.

Reads from parts to whole: ``read_checkpoint`` turns any supported file into a plain TimeSformer
state dict, ``infer_architecture`` reads the model's shape off that state dict,
``checkpoint_filter_fn`` (pure) adapts a state dict to a concrete model (embedding resize, head
drop, temporal-from-spatial init), and ``load_timesformer`` puts them together.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from timm.layers import resample_abs_pos_embed

from stream.errors import ModelError, OptionError
from train.model import AttentionType, DividedBlock, TimeSformer

_logger = logging.getLogger(__name__)

# Keys every TimeSformer (and every timm ViT with a class token) has.
_REQUIRED_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")
# Wrappers put in front of the model's own key names: DataParallel/DDP, the reference's
# `model.` wrapper module, and Lightning's attribute name.
_PREFIXES = ("", "module.", "model.", "module.model.", "model.module.")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


class CheckpointError(ModelError):
    """The file is not a usable TimeSformer (or ViT) checkpoint."""


@dataclass(frozen=True)
class RawCheckpoint:
    """A checkpoint's weights under plain TimeSformer key names, plus what it says about itself.

    kind: "pyth" (official), "lightning" (this project's .ckpt), "state_dict" (a plain or wrapped
    TimeSformer state dict) or "timm_vit" (an image ViT: no time_embed and no temporal weights).
    hparams: Lightning's ``hyper_parameters``, or for .pyth what its stored config says
    (num_frames, image_size, attention_type, num_classes, mean, std); may be empty.
    """

    state_dict: dict[str, torch.Tensor]
    kind: str
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    """A TimeSformer in eval mode with its weights, and how they were loaded."""

    model: TimeSformer
    arch: dict[str, Any]
    kind: str
    hparams: dict[str, Any]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]


def _torch_load(path: Path) -> Any:
    if not _written_by_torch_save(path):
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (not a file written by torch.save); "
            "expected an official TimeSformer .pyth, a state dict saved with torch.save, "
            "a Lightning .ckpt or a timm ViT checkpoint"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_err:
        # Our Lightning checkpoints may pickle objects (e.g. parsed config namespaces) in their
        # hyper_parameters; only for them do we fall back to a full unpickle.
        if path.suffix != ".ckpt":
            raise CheckpointError(
                f"{path}: cannot be read as a PyTorch checkpoint ({_weights_only_reason(safe_err)}); "
                "expected an official TimeSformer .pyth, a state dict saved with torch.save, "
                "a Lightning .ckpt or a timm ViT checkpoint"
            ) from safe_err
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise CheckpointError(
                f"{path}: cannot be read as a PyTorch checkpoint ({_first_line(err)}); "
                "expected a Lightning .ckpt saved by epic-train"
            ) from err


def _written_by_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (PK), or a pickle (protocol marker 0x80) before torch 1.6."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # let torch.load name the problem
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _weights_only_reason(err: BaseException) -> str:
    # torch's own text suggests weights_only=False, which the user cannot pass and should not
    # want for a file of unknown origin: say what the file holds instead.
    if "Weights only load failed" in str(err):
        return (
            "it holds Python objects besides tensors, which are only unpickled from an epic-train "
            ".ckpt: unpickling them could run code"
        )
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _pyth_hparams(cfg: Any) -> dict[str, Any]:
    """What an official checkpoint's stored config (a YAML dump of the yacs cfg) says."""
    if not isinstance(cfg, str):
        return {}
    try:
        tree = yaml.safe_load(cfg)
    except yaml.YAMLError:
        return {}
    if not isinstance(tree, dict):
        return {}
    data, tsf, model = (tree.get(k) or {} for k in ("DATA", "TIMESFORMER", "MODEL"))
    found = {
        "num_frames": data.get("NUM_FRAMES"),
        "image_size": data.get("TEST_CROP_SIZE") or data.get("TRAIN_CROP_SIZE"),
        "mean": data.get("MEAN"),
        "std": data.get("STD"),
        # How the reference sampled a clip (export turns them into clip_seconds).
        "sampling_rate": data.get("SAMPLING_RATE"),
        "target_fps": data.get("TARGET_FPS"),
        "attention_type": tsf.get("ATTENTION_TYPE"),
        "num_classes": model.get("NUM_CLASSES"),
    }
    return {k: v for k, v in found.items() if v is not None}


def _unwrap(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Strip the wrapper prefix the model's keys sit under; keys outside it are not the model's."""
    for prefix in _PREFIXES:
        if prefix + "cls_token" in sd:
            kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            dropped = sorted(k for k in sd if not k.startswith(prefix))
            if dropped:
                _logger.debug("%s: ignoring non-model entries %s", path, _group_keys(dropped))
            break
    else:
        kept = sd
    missing = [k for k in _REQUIRED_KEYS if k not in kept]
    if missing:
        sample = ", ".join(sorted(sd)[:8]) + (", ..." if len(sd) > 8 else "")
        raise CheckpointError(
            f"{path}: not a TimeSformer or ViT checkpoint: no {', '.join(missing)} among its "
            f"{len(sd)} weights (found: {sample})"
        )
    return kept


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read any supported checkpoint file into plain TimeSformer key names.

    Raises CheckpointError (never KeyError) for a missing file or one that holds no model weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a checkpoint dict "
            "(official 'model_state', Lightning 'state_dict', or a state dict)"
        )

    hparams: dict[str, Any] = {}
    if isinstance(obj.get("model_state"), dict):
        kind, sd = "pyth", obj["model_state"]
        hparams = _pyth_hparams(obj.get("cfg"))
    elif isinstance(obj.get("state_dict"), dict) and (
        "pytorch-lightning_version" in obj or "hyper_parameters" in obj
    ):
        kind, sd = "lightning", obj["state_dict"]
        hparams = dict(obj.get("hyper_parameters") or {})
        # epic-train nests the full architecture under "arch" (every hyperparameter must be a
        # VideoClassifier argument); top-level keys win where both say something.
        arch = hparams.get("arch")
        if isinstance(arch, dict):
            hparams = {**arch, **hparams}
    elif isinstance(obj.get("state_dict"), dict):
        kind, sd = "state_dict", obj["state_dict"]
    elif isinstance(obj.get("model"), dict) and not _is_tensor_dict(obj):
        kind, sd = "state_dict", obj["model"]
    elif _is_tensor_dict(obj):
        kind, sd = "state_dict", obj
    else:
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(
            f"{path}: no model weights found; expected 'model_state' (official .pyth), "
            f"'state_dict' (Lightning .ckpt) or a state dict of tensors, found keys: {keys}"
        )

    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    sd = _unwrap(sd, path)
    if kind == "state_dict" and "time_embed" not in sd and not _has_temporal(sd):
        kind = "timm_vit"
    return RawCheckpoint(state_dict=sd, kind=kind, hparams=hparams)


def _has_temporal(sd: dict[str, torch.Tensor]) -> bool:
    return any(".temporal_" in k for k in sd)


def infer_architecture(state_dict: dict[str, torch.Tensor], hparams: dict | None = None) -> dict:
    """TimeSformer constructor kwargs read off a state dict (plain key names).

    Shapes come from the weights: embed_dim (cls_token), depth (block count), patch_size
    (patch_embed.proj), img_size (pos_embed grid * patch), num_frames (time_embed), num_classes
    (head; 0 without one), mlp_ratio, qkv_bias. Attention type: temporal weights -> divided; a
    time_embed without them -> joint; neither -> space-only (an image ViT reads as space-only).
    What the weights cannot tell comes from ``hparams`` (this project's Lightning
    hyper_parameters or the .pyth config) when given: num_heads (else embed_dim // 64, the ViT
    convention), attention_type (wins over the keys), num_frames when there is no time_embed
    (else 8).
    """
    hparams = hparams or {}
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        raise CheckpointError(f"state dict lacks {', '.join(missing)}: not a TimeSformer")
    embed_dim = int(state_dict["cls_token"].shape[-1])
    proj = state_dict["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(
            f"patch_embed.proj.weight has shape {tuple(proj.shape)}, expected a square conv kernel"
        )
    patch_size = int(proj.shape[-1])
    num_patches = int(state_dict["pos_embed"].shape[1]) - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointError(
            f"pos_embed has {num_patches} patch positions, not a square grid (+1 class token)"
        )
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK_RE.match(k))}
    if not blocks:
        raise CheckpointError("state dict has no transformer blocks (blocks.N.*)")

    if "time_embed" in state_dict:
        num_frames = int(state_dict["time_embed"].shape[1])
    else:
        num_frames = int(hparams.get("num_frames") or 8)
    if _has_temporal(state_dict):
        attention = AttentionType.DIVIDED
    elif "time_embed" in state_dict:
        attention = AttentionType.JOINT
    else:
        attention = AttentionType.SPACE_ONLY
    if hparams.get("attention_type"):
        try:
            attention = AttentionType(hparams["attention_type"])
        except ValueError as err:
            raise CheckpointError(
                f"checkpoint hyperparameters name an unknown attention_type "
                f"{hparams['attention_type']!r}; expected one of {[a.value for a in AttentionType]}"
            ) from err

    if hparams.get("num_heads"):
        num_heads = int(hparams["num_heads"])
    elif embed_dim % 64 == 0:
        num_heads = embed_dim // 64
    else:
        num_heads = 1
        _logger.warning(
            "embed dim %d is not a multiple of 64 and the checkpoint does not say how many "
            "attention heads it has; assuming 1 (pass num_heads to override)",
            embed_dim,
        )
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    head = state_dict.get("head.weight")
    return {
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "num_frames": num_frames,
        "num_classes": int(head.shape[0]) if head is not None else 0,
        "embed_dim": embed_dim,
        "depth": max(blocks) + 1,
        "num_heads": num_heads,
        "mlp_ratio": fc1.shape[0] / embed_dim if fc1 is not None else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "attention_type": attention,
    }


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: TimeSformer, *, interpolation: str = "bicubic"
) -> dict[str, torch.Tensor]:
    """Adapt a (plain-key) state dict to ``model``; returns a new dict, the input is untouched.

    - pos_embed: the patch grid is resampled in 2-D (class position kept) to the model's grid,
      with timm's ``resample_abs_pos_embed`` (``interpolation``, antialiased).
    - time_embed: resampled in 1-D (linear; nearest if ``interpolation`` is "nearest") to the
      model's frame count.
    - head.*: dropped when the model's class count differs (or it has no head).
    - Divided model, source without temporal weights (an image ViT or a space-only model): as
      the reference's load_pretrained, temporal_attn.* <- attn.* and temporal_norm1 <- norm1 of
      the same block. temporal_fc and time_embed are left to the model's own init (as the
      reference: temporal_fc zero in every block but the first) and so show as missing keys.
    """
    out = dict(state_dict)
    target = model.state_dict()

    pos = out.get("pos_embed")
    if pos is not None and pos.shape != target["pos_embed"].shape:
        old = math.isqrt(pos.shape[1] - 1)
        out["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(model.patch_embed.grid_size),
            old_size=[old, old],
            num_prefix_tokens=1,
            interpolation=interpolation,
            antialias=interpolation != "nearest",
        )

    te = out.get("time_embed")
    if te is not None and "time_embed" in target and te.shape != target["time_embed"].shape:
        mode = "nearest" if interpolation == "nearest" else "linear"
        resized = F.interpolate(
            te.float().transpose(1, 2),
            size=target["time_embed"].shape[1],
            mode=mode,
            **({} if mode == "nearest" else {"align_corners": False}),
        )
        out["time_embed"] = resized.transpose(1, 2).to(te.dtype)

    head = out.get("head.weight")
    if head is not None and (
        "head.weight" not in target or target["head.weight"].shape != head.shape
    ):
        out.pop("head.weight")
        out.pop("head.bias", None)

    for i, blk in enumerate(model.blocks):
        if not isinstance(blk, DividedBlock):
            continue
        for src, dst in (("attn.", "temporal_attn."), ("norm1.", "temporal_norm1.")):
            for key in [k for k in state_dict if k.startswith(f"blocks.{i}.{src}")]:
                new_key = key.replace(f".{src}", f".{dst}", 1)
                if new_key not in state_dict:
                    out[new_key] = state_dict[key].clone()
    return out


def _group_keys(keys: list[str] | tuple[str, ...]) -> str:
    """'blocks.0.x.weight', ..., 'blocks.11.x.weight' -> 'blocks.{0-11}.x.weight'."""
    groups: dict[str, list[int]] = defaultdict(list)
    for key in keys:
        m = _BLOCK_RE.match(key)
        if m:
            groups["blocks.{}." + key[m.end() :]].append(int(m.group(1)))
        else:
            groups[key] = []
    parts = []
    for pattern, idx in sorted(groups.items()):
        if not idx:
            parts.append(pattern)
            continue
        idx.sort()
        span = (
            f"{idx[0]}-{idx[-1]}"
            if idx == list(range(idx[0], idx[-1] + 1))
            else ",".join(map(str, idx))
        )
        parts.append(pattern.format("{" + span + "}") if len(idx) > 1 else pattern.format(span))
    return ", ".join(parts)


def load_timesformer(
    path: str | Path,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    image_size: int | None = None,
    num_heads: int | None = None,
    attention_type: AttentionType | str | None = None,
    drop_path_rate: float | None = None,
    strict_report: bool = True,
) -> LoadedModel:
    """Build a TimeSformer shaped like the checkpoint and load its weights.

    The architecture is read from the checkpoint (``infer_architecture``); any keyword given
    overrides it, and the weights are adapted (``checkpoint_filter_fn``): a new image size or
    frame count resizes the embeddings, a new class count resets the head. An image ViT
    (kind "timm_vit") becomes a divided TimeSformer unless ``attention_type`` says otherwise. Missing and
    unexpected keys are reported in one grouped log line (a warning when ``strict_report``,
    else debug); expected gaps (an image ViT has no time_embed/temporal_fc) are logged at info.
    """
    raw = read_checkpoint(path)
    arch = infer_architecture(raw.state_dict, raw.hparams)
    overrides = {
        "num_classes": num_classes,
        "num_frames": num_frames,
        "img_size": image_size,
        "num_heads": num_heads,
        "attention_type": attention_type,
    }
    if raw.kind == "timm_vit" and attention_type is None and not raw.hparams.get("attention_type"):
        # An image ViT is a start point for a video model: build the divided TimeSformer, its
        # temporal attention initialised from the spatial one (as the reference's
        # load_pretrained). attention_type="space_only" asks for the per-frame baseline.
        arch["attention_type"] = AttentionType.DIVIDED
    arch.update({k: v for k, v in overrides.items() if v is not None})
    try:
        arch["attention_type"] = AttentionType(arch["attention_type"])
    except ValueError as err:
        raise OptionError(
            f"unknown attention type {arch['attention_type']!r}; "
            f"choose one of {[a.value for a in AttentionType]}"
        ) from err
    if arch["embed_dim"] % arch["num_heads"]:
        raise OptionError(
            f"num_heads={arch['num_heads']} does not divide the checkpoint's embed dim "
            f"{arch['embed_dim']}"
        )
    if arch["img_size"] % arch["patch_size"]:
        raise OptionError(
            f"image size {arch['img_size']} is not a multiple of the checkpoint's patch size "
            f"{arch['patch_size']}"
        )

    extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    model = TimeSformer(**arch, **extra)
    filtered = checkpoint_filter_fn(raw.state_dict, model)
    try:
        result = model.load_state_dict(filtered, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model they describe: {err}") from err
    missing, unexpected = tuple(result.missing_keys), tuple(result.unexpected_keys)
    _report(Path(path), raw, model, missing, unexpected, strict_report)
    return LoadedModel(
        model=model.eval(),
        arch=arch,
        kind=raw.kind,
        hparams=raw.hparams,
        missing_keys=missing,
        unexpected_keys=unexpected,
    )


def _report(
    path: Path,
    raw: RawCheckpoint,
    model: TimeSformer,
    missing: tuple[str, ...],
    unexpected: tuple[str, ...],
    strict_report: bool,
) -> None:
    # Without temporal weights in the source, time_embed and temporal_fc start from the model's
    # init, as in the reference; that is expected, not a problem to warn about.
    fresh_ok = "time_embed" not in raw.state_dict and not _has_temporal(raw.state_dict)
    expected = [k for k in missing if fresh_ok and (k == "time_embed" or ".temporal_fc." in k)]
    if model.num_classes and "head.weight" in raw.state_dict and "head.weight" in missing:
        expected += [k for k in missing if k.startswith("head.")]
    surprising = [k for k in missing if k not in expected]
    if expected:
        _logger.info("%s (%s): freshly initialised: %s", path, raw.kind, _group_keys(expected))
    if surprising or unexpected:
        level = logging.WARNING if strict_report else logging.DEBUG
        parts = []
        if surprising:
            parts.append(f"missing {len(surprising)}: {_group_keys(surprising)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_group_keys(unexpected)}")
        _logger.log(
            level,
            "%s (%s): weights do not match the model exactly; %s",
            path,
            raw.kind,
            "; ".join(parts),
        )
