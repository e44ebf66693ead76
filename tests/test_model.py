"""TimeSformer: shapes, parameter names, presets, temporal mixing, gradients."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from train.model import PRESETS, AttentionType, TimeSformer, build_timesformer

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = {
    "img_size": 32,
    "patch_size": 16,
    "num_frames": 4,
    "num_classes": 5,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "drop_path_rate": 0.0,
}


def _clip(batch=2, frames=4, size=32, seed=0):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", list(AttentionType))
def test_forward_shapes(attention):
    torch.manual_seed(0)
    model = TimeSformer(**SMALL, attention_type=attention).eval()
    x = _clip()
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        assert model.forward_features(x).shape == (2, 64)


def test_parameter_names_match_reference():
    model = TimeSformer(**SMALL)
    names = set(model.state_dict())
    for key in (
        "cls_token",
        "pos_embed",
        "time_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "head.weight",
        "head.bias",
    ):
        assert key in names
    for part in (
        "norm1",
        "attn.qkv",
        "attn.proj",
        "temporal_norm1",
        "temporal_attn.qkv",
        "temporal_attn.proj",
        "temporal_fc",
        "norm2",
        "mlp.fc1",
        "mlp.fc2",
    ):
        assert f"blocks.1.{part}.weight" in names
        assert f"blocks.1.{part}.bias" in names
    # Nothing beyond the reference's names: checkpoints load strictly both ways.
    allowed = ("cls_token", "pos_embed", "time_embed", "patch_embed.", "blocks.", "norm.", "head.")
    assert all(k.startswith(allowed) for k in names)


def test_space_only_has_no_temporal_parameters():
    names = set(TimeSformer(**SMALL, attention_type="space_only").state_dict())
    assert "time_embed" not in names
    assert not any("temporal" in k for k in names)
    joint = set(TimeSformer(**SMALL, attention_type="joint_space_time").state_dict())
    assert "time_embed" in joint
    assert not any("temporal" in k for k in joint)


def test_num_classes_zero_gives_identity_head_and_reset_restores():
    model = TimeSformer(**{**SMALL, "num_classes": 0}).eval()
    assert isinstance(model.head, torch.nn.Identity)
    assert model(_clip()).shape == (2, 64)
    model.reset_classifier(7)
    assert model.num_classes == 7
    assert model(_clip()).shape == (2, 7)


def test_presets_and_unknown_preset():
    for name, expected in (
        ("base", (768, 12, 12)),
        ("small", (384, 12, 6)),
        ("tiny", (192, 12, 3)),
    ):
        cfg = PRESETS[name]
        assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == expected
    model = build_timesformer("tiny", img_size=32, num_frames=2, depth=1, num_classes=3)
    assert (model.embed_dim, model.num_heads, len(model.blocks)) == (192, 3, 1)
    assert (model.img_size, model.patch_size, model.num_frames, model.num_classes) == (32, 16, 2, 3)
    with pytest.raises(ValueError, match="base"):
        build_timesformer("huge")


def test_time_embed_is_not_zero_initialised():
    model = TimeSformer(**SMALL)
    assert model.time_embed.abs().sum() > 0
    assert model.attention_type is AttentionType.DIVIDED


def test_permuting_frames_changes_divided_output():
    torch.manual_seed(0)
    model = TimeSformer(**SMALL).eval()
    x = _clip(batch=1)
    with torch.no_grad():
        out = model.forward_features(x)
        out_perm = model.forward_features(x[:, :, [2, 0, 3, 1]])
    # At init the temporal path is weak (deeper temporal_fc start at zero) but far above float
    # noise; the zero-time_embed test below shows the noise floor (~1e-7).
    assert (out - out_perm).abs().max() > 1e-3


def test_zero_time_embed_makes_divided_model_blind_to_frame_order():
    # Why time_embed is not zero-initialised: without a time signal the model is order-blind.
    torch.manual_seed(0)
    model = TimeSformer(**SMALL, time_embed_std=0.0).eval()
    x = _clip(batch=1)
    with torch.no_grad():
        diff = (
            (model.forward_features(x) - model.forward_features(x[:, :, [2, 0, 3, 1]])).abs().max()
        )
    assert diff < 1e-5


def test_gradients_reach_temporal_parameters():
    torch.manual_seed(0)
    model = TimeSformer(**SMALL).train()
    model(_clip()).logsumexp(-1).sum().backward()
    assert model.time_embed.grad.abs().sum() > 0
    for blk in model.blocks:
        assert blk.temporal_fc.weight.grad.abs().sum() > 0
    # Deeper temporal_fc start at zero (as in the reference), so only the first block's temporal
    # attention gets a gradient on step one; the rest follow once temporal_fc moves.
    first = model.blocks[0]
    assert first.temporal_attn.qkv.weight.grad.abs().sum() > 0
    assert first.temporal_attn.proj.weight.grad.abs().sum() > 0
    assert first.temporal_norm1.weight.grad.abs().sum() > 0


def test_input_size_and_frame_count_other_than_built_still_run():
    torch.manual_seed(0)
    model = TimeSformer(**SMALL).eval()
    with torch.no_grad():
        assert model(_clip(batch=1, frames=6, size=48)).shape == (1, 5)


@pytest.mark.parametrize("name", ["divided", "space_only"])
def test_reproduces_reference_logits(name):
    # Fixture made by the reference code (facebookresearch/TimeSformer vit.py); see docs/model.md.
    fixture = torch.load(FIXTURES / f"reference_{name}_tiny.pt", weights_only=True)
    model = TimeSformer(**fixture["config"]).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(fixture["input"])
        logits_other = model(fixture["input_other_size"])
    assert (logits - fixture["logits"]).abs().max() <= 1e-4
    assert (logits_other - fixture["logits_other_size"]).abs().max() <= 1e-4
    # The fixture is not degenerate: the logits differ between clips.
    assert (fixture["logits"][0] - fixture["logits"][1]).abs().max() > 1e-2


@pytest.mark.parametrize("attn_drop", [0.0, 0.3])
def test_attention_matches_timm_in_value_and_gradient(attn_drop):
    # Ours leaves out the key bias and folds the value bias into proj's bias; timm adds both.
    from timm.layers import Attention as TimmAttention

    from train.model import Attention

    torch.manual_seed(0)
    ours = Attention(64, num_heads=4, qkv_bias=True, attn_drop=attn_drop)
    with torch.no_grad():
        ours.qkv.bias.normal_(std=1.0)  # biases big enough that dropping one would show
        ours.proj.bias.normal_(std=1.0)
    reference = TimmAttention(64, num_heads=4, qkv_bias=True, attn_drop=attn_drop)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 10, 64)
    for module in (ours, reference):
        module.eval()
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5
    ours.train(), reference.train()
    for module in (ours, reference):
        torch.manual_seed(1)  # the same dropout mask for both
        module(x).square().sum().backward()
    for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters(), strict=True):
        assert (mine.grad - theirs.grad).abs().max() <= 1e-3 * theirs.grad.abs().max(), name


def test_divided_block_drops_paths_per_sample_like_the_reference():
    # The reference drops temporal residuals per (clip, patch) and spatial ones per (clip, frame):
    # the rows DropPath sees must be those, whatever layout the attention runs in.
    torch.manual_seed(0)
    model = TimeSformer(**{**SMALL, "drop_path_rate": 0.5}).train()
    block = model.blocks[0]
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x

    block.drop_path = Recorder()
    batch, frames, patches, dim = 2, SMALL["num_frames"], (32 // 16) ** 2, SMALL["embed_dim"]
    block(torch.randn(batch, 1 + patches * frames, dim), frames)
    assert seen == [
        (batch * patches, frames, dim),  # temporal: one row per clip and patch position
        (batch * frames, 1 + patches, dim),  # spatial: one row per clip and frame
        (batch, 1 + patches * frames, dim),  # MLP: one row per clip
    ]


def test_folding_temporal_fc_keeps_an_eval_models_outputs_with_one_linear_fewer_a_block():
    torch.manual_seed(0)
    model = TimeSformer(**SMALL).eval()
    with torch.no_grad():  # the reference zeroes every temporal_fc but the first: draw them all
        for block in model.blocks:
            block.temporal_fc.weight.normal_(0.0, 0.2)
            block.temporal_fc.bias.normal_(0.0, 0.2)
    x = _clip(batch=2)
    folded = copy.deepcopy(model).fold_for_inference()
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert (expected - got).abs().max() < 1e-5
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, torch.nn.Linear) for m in folded.modules()) == linears - SMALL["depth"]
    assert all(isinstance(b.temporal_fc, torch.nn.Identity) for b in folded.blocks)
    with torch.no_grad():  # folding again changes nothing
        assert torch.equal(folded.fold_for_inference()(x), got)


def test_folding_refuses_a_model_in_training():
    # drop_path sits between temporal attention's projection and temporal_fc while training.
    with pytest.raises(RuntimeError, match="eval"):
        TimeSformer(**SMALL).train().fold_for_inference()
