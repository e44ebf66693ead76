"""TimeSformer (Bertasius et al., ICML 2021) with divided space-time attention.

Numerically the same network as facebookresearch/TimeSformer ``timesformer/models/vit.py`` and with
the same parameter names, so official checkpoints load without a renaming table. Built from timm's
layers; einops carries the token reshapes.

Token layout, as in the reference: after the embeddings a clip is ``[B, 1 + N*T, D]``: the class
token, then the patch tokens with the spatial index outer and the frame index inner
(``b (n t) d``, n = h*w). The space-only baseline keeps one sequence per frame, ``[(B*T), 1 + N, D]``,
and averages the frames before the final norm.

The one intended difference from the reference is the initialisation of ``time_embed``: the
reference zero-initialises it, which leaves a model trained from scratch blind to frame order
(temporal attention without a time signal is permutation-equivariant and the class token averages
the frames). Here it is truncated-normal with ``time_embed_std``.
"""

from __future__ import annotations

from enum import Enum
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from timm.layers import Attention as TimmAttention
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import nn

# The reference's (and the paper's) pre-norm LayerNorm.
LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)


class AttentionType(str, Enum):
    DIVIDED = "divided_space_time"
    SPACE_ONLY = "space_only"
    JOINT = "joint_space_time"


class Attention(TimmAttention):
    """timm's multi-head self-attention, with q, k and v projected one by one.

    The parameters are timm's (one packed ``qkv`` Linear, so checkpoints load unchanged) and so is
    the arithmetic; the exported graph is what differs. timm projects to one packed [B, N, 3*D]
    tensor and splits it, which ONNX Runtime runs as a copy of the whole packed tensor before the
    three per-head transposes. Three projections from slices of the same weight skip that copy.
    Measured on TimeSformer-base 8x224, 2-core CPU: ORT's profiler put the time spent moving data
    at 79 ms a clip instead of 100, and fp32 and int8 clips ran 4-5% faster, interleaved.

    Two biases are dropped from the arithmetic, not from the parameters, with the same result:
    the key bias moves every score of a query's row by the same amount, which softmax ignores; and
    without attention dropout each row of attention weights sums to 1, so the value bias reaches
    the output unchanged and folds into proj's bias. That is 48 fewer Adds over activations in
    base's export (its profiled adds: 82 -> 60 ms a clip).

    ``attend`` takes the sequence outermost, which lets ORT read q, k and v in place; the divided
    block uses it for both of its attentions (base 8x224: 124 -> 52 Transposes after ORT's
    optimizer, fp32 1.6% and dynamic int8 6% faster, paired runs interleaved).
    """

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``x``: [B, N, D], one sequence per batch row -> [B, N, D]."""
        return self.attend(x, "b n (h d) -> b h n d", "b h n d -> b n (h d)", attn_mask, is_causal)

    def attend(
        self,
        x: torch.Tensor,
        split: str,
        merge: str,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        **axes: int,
    ) -> torch.Tensor:
        """Attention over a layout of the caller's choosing.

        ``split`` is the einops pattern from a projection of ``x`` to heads ``b h n d``, ``merge``
        the one from the output's heads back to tokens (``axes`` sizes them). With the sequence
        outermost (``n b (h d) -> b h n d``), ONNX Runtime reads q, k and v in place: it folds
        that transpose into its attention MatMuls (``transBatch``) instead of copying each.
        """
        dropout_p = self.attn_drop.p if self.training else 0.0
        weights = self.qkv.weight.chunk(3)
        q_bias, k_bias, v_bias = (
            self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        )
        if isinstance(self.k_norm, nn.Identity):
            # Adding k_bias adds q·k_bias to every score of a query's row, which softmax ignores.
            k_bias = None
        proj_bias = self.proj.bias
        folds = isinstance(self.norm, nn.Identity) and dropout_p == 0.0
        if folds and v_bias is not None and proj_bias is not None:
            # Each row of weights sums to 1, so v_bias passes through unchanged: it folds into
            # proj's bias, a constant of the export.
            proj_bias = proj_bias + self.proj.weight @ v_bias
            v_bias = None
        q, k, v = (
            rearrange(F.linear(x, w, bias), split, h=self.num_heads)
            for w, bias in zip(weights, (q_bias, k_bias, v_bias), strict=True)
        )
        x = F.scaled_dot_product_attention(
            self.q_norm(q),
            self.k_norm(k),
            v,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=self.scale,
        )
        x = self.norm(rearrange(x, merge, **axes))
        return self.proj_drop(F.linear(x, self.proj.weight, proj_bias))


def compose_linears(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One Linear computing ``second(first(x))``: weight W2 W1, bias W2 b1 + b2."""
    has_bias = first.bias is not None or second.bias is not None
    composed = nn.Linear(
        first.in_features,
        second.out_features,
        bias=has_bias,
        device=second.weight.device,
        dtype=second.weight.dtype,
    )
    with torch.no_grad():
        composed.weight.copy_(second.weight @ first.weight)
        if has_bias:
            bias = torch.zeros_like(composed.bias)
            if first.bias is not None:
                bias += second.weight @ first.bias
            if second.bias is not None:
                bias += second.bias
            composed.bias.copy_(bias)
    return composed


class Block(nn.Module):
    """Pre-norm transformer block: attention over whatever sequence it is given, then MLP.

    Used for the space-only (one sequence per frame) and joint space-time (one sequence per clip)
    baselines. ``num_frames`` is accepted so all blocks share one call signature.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DividedBlock(Block):
    """Divided space-time block: temporal attention, then spatial attention, then MLP.

    Temporal attention runs over the T tokens of each patch position (patch tokens only) and its
    output goes through ``temporal_fc`` before the residual. Spatial attention runs per frame over
    the N patches plus a copy of the class token; the T class-token outputs are averaged back into
    one. Where drop_path sits follows the reference exactly (before ``temporal_fc`` in the temporal
    branch, on the whole spatial residual including the class token).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        **kwargs,
    ):
        super().__init__(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            proj_drop=proj_drop,
            attn_drop=attn_drop,
            norm_layer=norm_layer,
            **kwargs,
        )
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        t, b = num_frames, x.shape[0]
        cls, patches = x[:, :1], x[:, 1:]

        # Both attentions take their sequences outermost (see Attention.attend) and merge their
        # heads straight into the block's own layout: the copies left are the two regroupings
        # and the two merges.
        xt = rearrange(patches, "b (n t) d -> t (b n) d", t=t)
        res_t = self.temporal_attn.attend(
            self.temporal_norm1(xt), "t bn (h d) -> bn h t d", "bn h t d -> bn t (h d)"
        )
        res_t = rearrange(self.drop_path(res_t), "(b n) t d -> b (n t) d", b=b)
        patches = patches + self.temporal_fc(res_t)

        xs = rearrange(patches, "b (n t) d -> n (b t) d", t=t)
        xs = torch.cat((repeat(cls, "b 1 d -> 1 (b t) d", t=t), xs), dim=0)
        res_s = self.attn.attend(
            self.norm1(xs), "n bt (h d) -> bt h n d", "(b t) h n d -> b n t (h d)", t=t
        )
        res_s = self._drop_frames(res_s)
        res_cls = reduce(res_s[:, :1], "b 1 t d -> b 1 d", "mean")
        res_patches = rearrange(res_s[:, 1:], "b n t d -> b (n t) d")

        x = torch.cat((cls + res_cls, patches + res_patches), dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def fold_temporal_fc(self) -> None:
        """Make temporal attention's output projection and ``temporal_fc`` one Linear, for inference.

        Between the two sit only dropout and drop_path, which are identities outside training, and
        a reordering of tokens, which a per-token Linear commutes with. One GEMM fewer a block
        (base 8x224: 22 of 392 GFLOP a clip). The fold runs in torch, so the export gets the
        product as a plain weight that the int8 quantizer can take.
        """
        if self.training:
            raise RuntimeError("fold_temporal_fc is for eval models: training drops paths between")
        if isinstance(self.temporal_fc, nn.Identity):
            return  # already folded: a second fold would compose with nothing
        self.temporal_attn.proj = compose_linears(self.temporal_attn.proj, self.temporal_fc)
        self.temporal_fc = nn.Identity()

    def _drop_frames(self, res: torch.Tensor) -> torch.Tensor:
        """drop_path over ``res`` [B, N, T, D] frame by frame, as the reference drops it."""
        if not self.training or isinstance(self.drop_path, nn.Identity):
            return res
        frames = rearrange(res, "b n t d -> (b t) n d")
        return rearrange(self.drop_path(frames), "(b t) n d -> b n t d", b=res.shape[0])


class TimeSformer(nn.Module):
    """Video transformer: float [B, 3, T, H, W] normalized RGB -> logits [B, num_classes]."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 8,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        attention_type: AttentionType | str = AttentionType.DIVIDED,
        time_embed_std: float = 0.02,
        norm_layer: type[nn.Module] = LAYER_NORM,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.attention_type = AttentionType(attention_type)
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_frames = num_frames
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.depth = depth

        # Not strict about the input size: like the reference, other sizes get the embeddings
        # resized on the fly (see _pos_embed_for).
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=3,
            embed_dim=embed_dim,
            strict_img_size=False,
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        if self.attention_type != AttentionType.SPACE_ONLY:
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
            self.time_drop = nn.Dropout(drop_rate)

        block_cls = DividedBlock if self.attention_type == AttentionType.DIVIDED else Block
        # Stochastic depth rising linearly to drop_path_rate (plain floats: works on "meta" too).
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            block_cls(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                act_layer=act_layer,
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self._init_weights(time_embed_std)

    def _init_weights(self, time_embed_std: float) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if hasattr(self, "time_embed") and time_embed_std > 0:
            trunc_normal_(self.time_embed, std=time_embed_std)
        self.apply(_init_module)
        # As the reference: every temporal_fc but the first starts at zero, so each deeper block
        # starts out as a plain spatial (image) block.
        for blk in list(self.blocks)[1:]:
            if isinstance(blk, DividedBlock):
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def fold_for_inference(self) -> TimeSformer:
        """Fold what only training keeps apart (see :meth:`DividedBlock.fold_temporal_fc`), in
        place; an eval model's outputs stay the same up to float rounding. Returns the model."""
        for block in self.blocks:
            if isinstance(block, DividedBlock):
                block.fold_temporal_fc()
        return self

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_module)

    def _pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """pos_embed for a patch grid; the reference's nearest resize when the input size differs."""
        if (grid_h, grid_w) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        gh, gw = self.patch_embed.grid_size
        grid = rearrange(self.pos_embed[:, 1:], "1 (h w) d -> 1 d h w", h=gh, w=gw)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="nearest")
        return torch.cat((self.pos_embed[:, :1], rearrange(grid, "1 d h w -> 1 (h w) d")), dim=1)

    def _time_embed_for(self, num_frames: int) -> torch.Tensor:
        """time_embed for a frame count; the reference's nearest resize when it differs."""
        if num_frames == self.time_embed.shape[1]:
            return self.time_embed
        te = F.interpolate(self.time_embed.transpose(1, 2), size=num_frames, mode="nearest")
        return te.transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> the final-norm class token [B, embed_dim]."""
        b, _, t, h, w = x.shape
        x = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self._pos_embed_for(h // self.patch_size, w // self.patch_size))

        if self.attention_type == AttentionType.SPACE_ONLY:
            for blk in self.blocks:
                x = blk(x, t)
            x = reduce(x, "(b t) n d -> b n d", "mean", t=t)
        else:
            # Every frame's class token is the same (cls_token + pos_embed[0]); keep frame 0's.
            cls = x[::t, :1]
            x = rearrange(x[:, 1:], "(b t) n d -> b n t d", b=b)
            x = self.time_drop(x + self._time_embed_for(t))
            x = torch.cat((cls, rearrange(x, "b n t d -> b (n t) d")), dim=1)
            for blk in self.blocks:
                x = blk(x, t)

        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _init_module(m: nn.Module) -> None:
    """The reference's (and timm ViT's) init: truncated-normal Linear weights, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


PRESETS: dict[str, dict] = {
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
}


def build_timesformer(preset: str = "base", **overrides) -> TimeSformer:
    """A TimeSformer from a named size preset; any constructor argument can be overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown TimeSformer preset {preset!r}; choose one of {sorted(PRESETS)}")
    return TimeSformer(**{**PRESETS[preset], **overrides})
