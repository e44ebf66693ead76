"""Checkpoint reading, architecture inference, the pure filter and load_timesformer."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import timm
import torch

from stream.errors import EpicError, ModelError, OptionError
from train.checkpoint import (
    CheckpointError,
    checkpoint_filter_fn,
    infer_architecture,
    load_timesformer,
    read_checkpoint,
)
from train.model import AttentionType, TimeSformer, build_timesformer

FIXTURES = Path(__file__).parent / "fixtures"
CFG = {
    "img_size": 32,
    "patch_size": 8,
    "num_frames": 4,
    "num_classes": 5,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 1,
    "drop_path_rate": 0.0,
}

PYTH_CFG = """\
DATA:
  NUM_FRAMES: 4
  SAMPLING_RATE: 8
  TARGET_FPS: 30
  TRAIN_CROP_SIZE: 32
  TEST_CROP_SIZE: 32
  MEAN: [0.45, 0.45, 0.45]
  STD: [0.225, 0.225, 0.225]
MODEL:
  NUM_CLASSES: 5
TIMESFORMER:
  ATTENTION_TYPE: divided_space_time
"""


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = TimeSformer(**{**CFG, **overrides}).eval()
    with torch.no_grad():  # make the zero-initialised temporal_fc matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _clip(frames=4, size=32, batch=2):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(3))


def _save_pyth(model, path):
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 15, "model_state": sd, "optimizer_state": {}, "cfg": PYTH_CFG}, path)
    return path


def test_official_pyth_layout_loads_exactly(tmp_path):
    model = _model()
    loaded = load_timesformer(_save_pyth(model, tmp_path / "TimeSformer_divST_tiny.pyth"))
    assert loaded.kind == "pyth"
    assert loaded.missing_keys == () and loaded.unexpected_keys == ()
    assert not loaded.model.training
    src, dst = model.state_dict(), loaded.model.state_dict()
    assert src.keys() == dst.keys()
    assert all(torch.equal(src[k], dst[k]) for k in src)
    x = _clip()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.hparams["num_frames"] == 4
    assert loaded.hparams["attention_type"] == "divided_space_time"
    assert loaded.hparams["mean"] == [0.45, 0.45, 0.45]
    assert (loaded.hparams["sampling_rate"], loaded.hparams["target_fps"]) == (8, 30)


def test_plain_state_dicts_with_wrappers_load(tmp_path):
    model = _model()
    sd = model.state_dict()
    variants = {
        "plain.pth": sd,
        "ddp.pth": {f"module.{k}": v for k, v in sd.items()},
        "nested.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "under_model.pth": {"model": sd, "args": {"lr": 0.1}},
    }
    x = _clip()
    with torch.no_grad():
        expected = model(x)
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        loaded = load_timesformer(tmp_path / name)
        assert loaded.kind == "state_dict", name
        assert loaded.missing_keys == () and loaded.unexpected_keys == (), name
        with torch.no_grad():
            assert torch.equal(loaded.model(x), expected), name


def test_lightning_checkpoint_reads_model_weights_and_hparams(tmp_path):
    model = _model(num_heads=4)
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd["criterion.weight"] = torch.ones(5)
    hparams = {
        "class_names": ["a", "b", "c", "d", "e"],
        "clip_seconds": 2.0,
        "num_heads": 4,
        "attention_type": "divided_space_time",
        "num_frames": 4,
        "image_size": 32,
        # not loadable with weights_only=True: exercises the .ckpt fallback
        "namespace": argparse.Namespace(lr=0.1),
    }
    ckpt = {
        "state_dict": sd,
        "hyper_parameters": hparams,
        "pytorch-lightning_version": "2.5.0",
        "epoch": 1,
    }
    torch.save(ckpt, tmp_path / "last.ckpt")

    raw = read_checkpoint(tmp_path / "last.ckpt")
    assert raw.kind == "lightning"
    assert "criterion.weight" not in raw.state_dict
    assert raw.hparams["class_names"] == ["a", "b", "c", "d", "e"]
    loaded = load_timesformer(tmp_path / "last.ckpt")
    # heads cannot be read off the weights; 64 // 64 would give 1, the hparams say 4
    assert loaded.arch["num_heads"] == 4 and loaded.model.num_heads == 4
    assert loaded.missing_keys == () and loaded.unexpected_keys == ()
    x = _clip()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_arbitrary_pickles_are_refused_outside_ckpt(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": _model().state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pth"):
        read_checkpoint(path)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_infer_architecture_recovers_preset_kwargs(preset):
    kwargs = {"img_size": 64, "patch_size": 16, "num_frames": 6, "num_classes": 7}
    with torch.device("meta"):
        model = build_timesformer(preset, **kwargs)
    arch = infer_architecture(model.state_dict())
    expected = {
        "embed_dim": model.embed_dim,
        "depth": 12,
        "num_heads": model.num_heads,
        "attention_type": AttentionType.DIVIDED,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        **kwargs,
    }
    assert arch == expected


@pytest.mark.parametrize("attention", list(AttentionType))
def test_infer_architecture_tells_attention_types_apart(attention):
    arch = infer_architecture(TimeSformer(**CFG, attention_type=attention).state_dict())
    assert arch["attention_type"] is attention
    hinted = infer_architecture(
        TimeSformer(**CFG, attention_type=attention).state_dict(),
        {"attention_type": "joint_space_time"},
    )
    assert hinted["attention_type"] is AttentionType.JOINT


def test_infer_architecture_without_head():
    assert (
        infer_architecture(TimeSformer(**{**CFG, "num_classes": 0}).state_dict())["num_classes"]
        == 0
    )


def test_embeddings_resize_and_model_runs(tmp_path):
    model = _model()
    path = _save_pyth(model, tmp_path / "m.pyth")
    loaded = load_timesformer(path, image_size=48, num_frames=6)
    new = loaded.model
    assert new.pos_embed.shape == (1, 1 + 6 * 6, 64)
    assert new.time_embed.shape == (1, 6, 64)
    assert loaded.missing_keys == () and loaded.unexpected_keys == ()
    # the class position is kept, not interpolated
    assert torch.equal(new.pos_embed[:, 0], model.pos_embed[:, 0])
    # untouched weights arrive as they were
    assert torch.equal(new.blocks[1].temporal_fc.weight, model.blocks[1].temporal_fc.weight)
    with torch.no_grad():
        out = new(_clip(frames=6, size=48))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_filter_is_pure_and_interpolates_sensibly():
    source = _model()
    sd = source.state_dict()
    with torch.no_grad():
        sd["pos_embed"][:, 1:] = torch.linspace(-1, 1, 64)  # constant over the grid
        sd["time_embed"][:] = torch.arange(4.0).view(1, 4, 1)  # a ramp over frames
    before = {k: v.clone() for k, v in sd.items()}
    target = TimeSformer(**{**CFG, "img_size": 56, "num_frames": 7, "num_classes": 9})
    out = checkpoint_filter_fn(sd, target)

    assert sd.keys() == before.keys()
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    assert out["pos_embed"].shape == target.pos_embed.shape
    assert torch.allclose(
        out["pos_embed"][:, 1:], torch.linspace(-1, 1, 64).expand(1, 49, 64), atol=1e-5
    )
    te = out["time_embed"][0, :, 0]
    assert te.shape == (7,) and te[0] == 0 and te[-1] == 3 and (te.diff() >= 0).all()
    assert "head.weight" not in out and "head.bias" not in out
    same = checkpoint_filter_fn(sd, TimeSformer(**CFG))
    assert all(same[k] is sd[k] for k in sd)


def test_head_resets_when_classes_differ(tmp_path, caplog):
    model = _model()
    path = _save_pyth(model, tmp_path / "m.pyth")
    with caplog.at_level(logging.INFO, logger="train.checkpoint"):
        loaded = load_timesformer(path, num_classes=3)
    assert loaded.model.head.weight.shape == (3, 64)
    assert set(loaded.missing_keys) == {"head.weight", "head.bias"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert torch.equal(loaded.model.norm.weight, model.norm.weight)
    no_head = load_timesformer(path, num_classes=0)
    assert isinstance(no_head.model.head, torch.nn.Identity)
    assert no_head.unexpected_keys == ()


def test_gradients_reach_temporal_parameters_after_loading(tmp_path):
    loaded = load_timesformer(_save_pyth(_model(), tmp_path / "m.pyth"))
    model = loaded.model.train()
    model(_clip()).logsumexp(-1).sum().backward()
    for blk in model.blocks:  # temporal_fc is non-zero in these weights, so all blocks get some
        for p in (
            blk.temporal_attn.qkv.weight,
            blk.temporal_attn.proj.weight,
            blk.temporal_norm1.weight,
            blk.temporal_fc.weight,
        ):
            assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.time_embed.grad.abs().sum() > 0


def test_timm_vit_loads_with_temporal_from_spatial(tmp_path, caplog):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit_tiny.pth"
    torch.save(vit.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="train.checkpoint"):
        loaded = load_timesformer(path, num_classes=5, num_frames=4, image_size=32)
    model, vsd = loaded.model, vit.state_dict()
    assert loaded.kind == "timm_vit"
    assert loaded.arch["embed_dim"] == 192 and loaded.arch["depth"] == 12
    assert loaded.arch["num_heads"] == 3 and loaded.arch["attention_type"] is AttentionType.DIVIDED
    assert loaded.unexpected_keys == ()
    fresh = {"time_embed", "head.weight", "head.bias"} | {
        f"blocks.{i}.temporal_fc.{p}" for i in range(12) for p in ("weight", "bias")
    }
    assert set(loaded.missing_keys) == fresh
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for i in (0, 11):
        blk = model.blocks[i]
        assert torch.equal(blk.temporal_attn.qkv.weight, vsd[f"blocks.{i}.attn.qkv.weight"])
        assert torch.equal(blk.temporal_attn.proj.bias, vsd[f"blocks.{i}.attn.proj.bias"])
        assert torch.equal(blk.temporal_norm1.weight, vsd[f"blocks.{i}.norm1.weight"])
        assert torch.equal(blk.attn.qkv.weight, vsd[f"blocks.{i}.attn.qkv.weight"])
    assert not model.blocks[11].temporal_fc.weight.any()  # as the reference: zero but the first
    assert torch.equal(model.pos_embed[:, 0], vsd["pos_embed"][:, 0])
    assert model.time_embed.abs().sum() > 0
    with torch.no_grad():
        assert model(_clip()).shape == (2, 5)


def test_mismatched_keys_are_reported_in_one_grouped_warning(tmp_path, caplog):
    path = _save_pyth(_model(), tmp_path / "m.pyth")
    with caplog.at_level(logging.WARNING, logger="train.checkpoint"):
        loaded = load_timesformer(path, attention_type="space_only")
    assert "time_embed" in loaded.unexpected_keys
    assert len(loaded.unexpected_keys) == 1 + 2 * 8  # time_embed + 8 temporal tensors x 2 blocks
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "blocks.{0-1}.temporal_fc.weight" in message and "m.pyth" in message
    assert message.count("temporal_fc.weight") == 1


def _write_random_bytes(path):
    path.write_bytes(bytes(range(256)) * 8)


def _write_json(path):
    path.write_text(json.dumps({"model_state": {"cls_token": [0.0]}}))


def _write_unrelated_tensors(path):
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.bias": torch.zeros(2)}, path)


def _write_non_weights(path):
    torch.save({"epoch": 3, "best_acc": 0.5}, path)


def _write_list(path):
    torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize(
    "writer",
    [_write_random_bytes, _write_json, _write_unrelated_tensors, _write_non_weights, _write_list],
)
@pytest.mark.parametrize("suffix", [".pyth", ".ckpt"])
def test_non_checkpoints_get_a_clear_error(tmp_path, writer, suffix):
    path = tmp_path / f"not_a_model{suffix}"
    writer(path)
    with pytest.raises(CheckpointError) as info:
        load_timesformer(path)
    message = str(info.value)
    assert "not_a_model" in message
    assert "expected" in message or "not a TimeSformer" in message
    assert isinstance(info.value, ModelError) and isinstance(info.value, EpicError)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pyth")
    path = _save_pyth(_model(), tmp_path / "m.pyth")
    with pytest.raises(OptionError, match="num_heads"):
        load_timesformer(path, num_heads=3)
    with pytest.raises(OptionError, match="patch size"):
        load_timesformer(path, image_size=36)
    with pytest.raises(OptionError, match="attention type"):
        load_timesformer(path, attention_type="sideways")


def test_reference_weights_in_official_layout_give_reference_logits(tmp_path):
    # End to end: reference-made weights (tests/fixtures, see docs/model.md) saved as an official
    # .pyth, read back with the architecture inferred from the file.
    fixture = torch.load(FIXTURES / "reference_divided_tiny.pt", weights_only=True)
    sd = {f"model.{k}": v for k, v in fixture["state_dict"].items()}
    torch.save({"model_state": sd, "epoch": 1}, tmp_path / "ref.pyth")
    # The reference hard-codes its head count; a 32-dim test model cannot follow dim // 64.
    loaded = load_timesformer(tmp_path / "ref.pyth", num_heads=fixture["config"]["num_heads"])
    arch = {k: loaded.arch[k] for k in fixture["config"]}
    assert arch == fixture["config"]
    with torch.no_grad():
        logits = loaded.model(fixture["input"])
    assert (logits - fixture["logits"]).abs().max() <= 1e-4
