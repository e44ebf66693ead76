"""VideoClassifier: the contract's uint8 front, hyperparameters, freezing, schedule, learning."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from stream.errors import OptionError
from train.model import build_timesformer
from train.module import VideoClassifier, cosine_with_warmup, resolve_arch
from train.normalize import FrameNormalizer

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}
CLASSES = ["open bag", "take bag", "put bag"]


def tiny(**kwargs) -> VideoClassifier:
    kwargs = {
        "class_names": CLASSES,
        "preset": "tiny",
        "arch": TINY,
        "num_frames": 4,
        "image_size": 32,
        **kwargs,
    }
    return VideoClassifier(**kwargs)


def clips(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 4, 32, 32, 3), dtype=torch.uint8, generator=g)


def test_forward_normalizes_exactly_like_the_exported_front():
    torch.manual_seed(0)
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.225, 0.25)
    model = tiny(mean=mean, std=std).eval()
    frames = clips()
    expected = model.model(FrameNormalizer(mean, std)(frames))
    torch.testing.assert_close(model(frames), expected)
    assert model(frames).shape == (2, len(CLASSES))


def test_hparams_hold_what_export_and_reload_need():
    model = tiny(clip_seconds=1.5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    hp = model.hparams
    assert hp.class_names == CLASSES
    assert hp.clip_seconds == 1.5
    assert list(hp.mean) == [0.5, 0.5, 0.5] and list(hp.std) == [0.25, 0.25, 0.25]
    assert hp.num_frames == 4 and hp.image_size == 32
    # The architecture is spelled out, so a loader never has to guess it from a preset.
    assert hp.arch["num_heads"] == 2 and hp.arch["embed_dim"] == 32 and hp.arch["depth"] == 2
    assert hp.arch["attention_type"] == "divided_space_time"
    assert hp.arch["patch_size"] == 8
    rebuilt = VideoClassifier(**{k: v for k, v in hp.items() if not k.startswith("_")})
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys, same shapes


def test_state_dict_is_the_timesformer_under_model():
    keys = list(tiny().state_dict())
    assert keys and all(k.startswith("model.") for k in keys)
    assert "model.head.weight" in keys and "model.time_embed" in keys


def test_class_count_comes_from_class_names():
    assert tiny(class_names=["a", "b"]).model.head.out_features == 2
    assert tiny(class_names=list("abcde")).model.head.out_features == 5


def test_starts_from_a_checkpoint_with_embeddings_resized_and_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = build_timesformer("tiny", **TINY, img_size=16, num_frames=2, num_classes=7)
    path = tmp_path / "pretrained.pth"
    torch.save(source.state_dict(), path)
    model = tiny(checkpoint=str(path), arch={"num_heads": 2, "drop_path_rate": 0.0})
    assert model.model.head.out_features == len(CLASSES)
    assert model.model.time_embed.shape[1] == 4  # resized from 2 frames
    assert model.model.pos_embed.shape[1] == 1 + (32 // 8) ** 2  # resized from 16 px
    torch.testing.assert_close(
        model.model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight
    )
    hp = model.hparams
    assert hp.arch["num_heads"] == 2 and hp.arch["depth"] == 2 and hp.arch["embed_dim"] == 32
    assert hp.checkpoint is None  # the trained weights travel in the state dict, not the .pth
    with pytest.raises(OptionError, match="comes from the checkpoint"):
        tiny(checkpoint=str(path), arch={"depth": 4})


def test_resolve_arch_fills_every_argument_from_the_preset():
    arch = resolve_arch("small", {"depth": 4})
    assert arch["embed_dim"] == 384 and arch["num_heads"] == 6 and arch["depth"] == 4
    assert arch["attention_type"] == "divided_space_time"
    assert "num_classes" not in arch and "img_size" not in arch


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"class_names": ["only"]}, "at least 2 class names"),
        ({"preset": "huge"}, "model.preset"),
        ({"optimizer": "sgd"}, "model.optimizer"),
        ({"schedule": "step"}, "model.schedule"),
        ({"freeze": "blocks"}, "model.freeze"),
        ({"freeze": "blocks:9"}, "more than the model's 2 blocks"),
        ({"arch": {"num_classes": 3}}, "unknown keys"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, words):
    with pytest.raises(OptionError, match=words):
        tiny(**kwargs)


def trainable(model: VideoClassifier) -> set[str]:
    return {n for n, p in model.model.named_parameters() if p.requires_grad}


def test_freeze_head_trains_only_the_head_and_keeps_the_rest_in_eval():
    model = tiny(freeze="head", arch={**TINY, "drop_path_rate": 0.5})
    assert trainable(model) == {"head.weight", "head.bias"}
    model.train()
    assert model.model.head.training
    assert not model.model.blocks[1].training  # frozen features: no drop-path noise


def test_freeze_blocks_freezes_embeddings_and_the_first_blocks():
    model = tiny(freeze="blocks:1")
    names = trainable(model)
    assert not any(n.startswith(("patch_embed.", "blocks.0.")) for n in names)
    assert not {"cls_token", "pos_embed", "time_embed"} & names
    assert any(n.startswith("blocks.1.") for n in names)
    assert {"norm.weight", "head.weight"} <= names
    assert trainable(tiny(freeze="none")) == {n for n, _ in tiny().model.named_parameters()}


def test_cosine_with_warmup_rises_then_decays_to_zero():
    f = cosine_with_warmup(warmup_steps=4, total_steps=14)
    warm = [f(s) for s in range(4)]
    assert warm == sorted(warm) and warm[-1] < 1.0
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.5)
    assert f(14) == pytest.approx(0.0, abs=1e-12)
    decay = [f(s) for s in range(4, 15)]
    assert decay == sorted(decay, reverse=True)
    constant = cosine_with_warmup(warmup_steps=0, total_steps=math.inf)
    assert constant(0) == constant(1000) == 1.0


def test_predict_step_returns_probabilities():
    model = tiny().eval()
    probs = model.predict_step((clips(3), torch.zeros(3, dtype=torch.long)), 0)
    assert probs.shape == (3, len(CLASSES))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    assert (probs >= 0).all()
    torch.testing.assert_close(model.predict_step(clips(3), 0), probs)


def separable_loader(n: int = 16) -> DataLoader:
    """Class = whether the clips are tinted red or blue, under random brightness and noise."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 2
    frames = torch.randint(40, 160, (n, 1, 1, 1, 1), generator=g).float().expand(n, 4, 32, 32, 3)
    frames = frames + torch.randint(-20, 20, (n, 4, 32, 32, 3), generator=g)
    tint = torch.zeros(n, 1, 1, 1, 3)
    tint[labels == 0, ..., 0] = 60.0  # blue (BGR)
    tint[labels == 1, ..., 2] = 60.0  # red
    return DataLoader(
        TensorDataset((frames + tint).clamp(0, 255).to(torch.uint8), labels), batch_size=8
    )


def test_fit_learns_and_reports_the_validation_epoch(tmp_path):
    pl.seed_everything(0)
    model = tiny(class_names=["blue", "red"], lr=3e-3, warmup_epochs=1)
    trainer = pl.Trainer(
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    loader = separable_loader()
    trainer.fit(model, loader, loader)
    assert trainer.callback_metrics["val_acc"] == 1.0
    assert trainer.callback_metrics["train_loss_epoch"] < 0.5
    report = model.val_report
    assert report["epoch"] == 5
    assert report["confusion"] == [[8, 0], [0, 8]]
    assert report["per_class_acc"] == {"blue": 1.0, "red": 1.0}
