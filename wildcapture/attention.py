"""CLS-attention heatmaps from a timm VisionTransformer, in the same pass as logits and features; the
registry of heatmap kinds (HEATMAP_KINDS) and their channel layout.

Heatmap convention (the project's design): post-softmax attention of the CLS query to the patch
tokens, reshaped row-major to the patch grid, so cell (0, 0) is the top-left patch; averaged over
heads (``cls_last``), or kept per head (``cls_heads``) and per block and head (``cls_all``). Prefix
tokens (class, register, distillation) are sliced off with the model's own ``num_prefix_tokens``.

The CLS kinds cost about a plain forward pass: forward hooks on ``block.attn.q_norm`` and
``block.attn.k_norm`` (modules, identity unless the model has qk-norm) see the post-norm q and k
(N, heads, T, head_dim), and only the CLS row ``softmax(q[:, :, :1] * scale @ k^T)`` is computed, in
float32, while every block keeps timm's fused (SDPA) attention. ``rollout`` needs the whole matrices:
it hooks ``block.attn.attn_drop``, whose input in timm's unfused ``Attention.forward`` (timm 1.0.x) is
``softmax(q @ k^T * scale)`` (N, heads, T, T), with every block off the fused path for the call.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ClsKind:
    """A heatmap kind made from the CLS query's attention rows of some blocks, on timm's fused kernel.

    `blocks(block, depth)`: the blocks it reads (`block` is heatmap.block, resolved to 0..depth-1).
    `combine(rows)`: rows (N, len(blocks) * heads, patches), block-major, float32 -> the maps (N, patches)
    for one channel, or (N, C, patches). `channels(depth, heads)`: C (1 = no channel axis).
    """

    blocks: Callable[[int, int], list[int]]
    combine: Callable[[Tensor], Tensor]
    channels: Callable[[int, int], int] = lambda depth, heads: 1


@dataclass(frozen=True)
class RolloutKind:
    """Attention rollout (Abnar & Zuidema 2020): needs every block's whole attention matrix."""

    def blocks(self, block: int, depth: int) -> list[int]:
        return list(range(depth))

    def channels(self, depth: int, heads: int) -> int:
        return 1


def _chosen(block: int, depth: int) -> list[int]:
    return [block]


def _every(block: int, depth: int) -> list[int]:
    return list(range(depth))


# heatmap.kind -> how it is made: a new kind is one line here (a ClsKind of its blocks and combination).
HEATMAP_KINDS: dict[str, ClsKind | RolloutKind] = {
    "cls_last": ClsKind(_chosen, lambda rows: rows.mean(1)),
    "rollout": RolloutKind(),
    "cls_heads": ClsKind(_chosen, lambda rows: rows, lambda depth, heads: heads),
    "cls_all": ClsKind(_every, lambda rows: rows, lambda depth, heads: depth * heads),
}


def heatmap_channels(kind: str, depth: int, heads: int) -> int:
    """Return the channel count C of `kind`'s heatmaps for a ViT of `depth` blocks and `heads` heads
    (1 for the single-map kinds, stored without a channel axis)."""
    return HEATMAP_KINDS[kind].channels(depth, heads)


def _check_model(model: nn.Module) -> None:
    missing = [a for a in ("blocks", "patch_embed", "num_prefix_tokens", "forward_features",
                           "forward_head", "head") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"forward_with_heatmaps needs a timm VisionTransformer-like model; "
            f"{type(model).__name__} has no {', '.join(missing)}. "
            f"If the ViT is wrapped, pass the inner timm model (e.g. wrapper.modelVit).")
    if getattr(model, "cls_token", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no class token (class_token=False); CLS-attention "
            f"heatmaps need one. Build the ViT with class_token=True.")
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        parts = ("fused_attn", "scale", "attn_drop", "q_norm", "k_norm")
        if attn is None or not all(hasattr(attn, p) for p in parts) or not all(
                isinstance(getattr(attn, p), nn.Module) for p in parts[2:]):
            raise TypeError(
                f"block {i} ({type(blk).__name__}) has no timm Attention module with "
                f"{', '.join(repr(p) for p in parts)}; only standard timm ViT blocks are supported.")


def _resolve_block(block: int, depth: int) -> int:
    if not -depth <= block < depth:
        raise ValueError(f"block={block} is out of range for a model with {depth} blocks; "
                         f"valid values are {-depth}..{depth - 1}.")
    return block % depth


@contextmanager
def _unfused(attns: Sequence[nn.Module]) -> Iterator[None]:
    """Switch the given timm Attention modules to the unfused path; restore on exit."""
    saved = [a.fused_attn for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        yield
    finally:
        for a, flag in zip(attns, saved):
            a.fused_attn = flag


@contextmanager
def _hooks(modules: Sequence[nn.Module], hook) -> Iterator[None]:
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    pe = model.patch_embed
    if getattr(model, "dynamic_img_size", False) and hasattr(pe, "dynamic_feat_size"):
        return tuple(pe.dynamic_feat_size(tuple(images.shape[-2:])))
    return tuple(pe.grid_size)


def _token_check(npt: int, gh: int, gw: int) -> Callable[[int], None]:
    """Return a check that a token count T is `npt` prefix tokens + a gh x gw patch grid (RuntimeError if not)."""
    def check(t: int) -> None:
        if t - npt != gh * gw:
            raise RuntimeError(
                f"attention has {t} tokens but {npt} prefix + {gh}x{gw} patches were expected "
                f"(patch dropout active? call model.eval()).")
    return check


def cls_attention_row(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Return the CLS query's post-softmax attention, float32 (N, heads, T), from post-norm q and k
    (N, heads, T, head_dim) of any dtype: ``softmax(q[:, :, 0] * scale @ k^T)``, as timm's unfused path
    computes it, in float32 even under autocast."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q0 = q[:, :, :1].detach().float() * scale
        return torch.softmax(q0 @ k.detach().float().transpose(-2, -1), dim=-1)[:, :, 0]


@contextmanager
def _cls_row_hooks(attns: Sequence[nn.Module], check_tokens: Callable[[int], None]) -> Iterator[list]:
    """Hook ``q_norm`` and ``k_norm`` of each Attention in `attns` (fused path untouched); yields a list
    whose item i becomes block attns[i]'s CLS row (N, heads, T) float32 during the forward pass."""
    rows: list[Tensor | None] = [None] * len(attns)
    seen: dict[tuple[int, str], Tensor] = {}
    where = {}
    for i, a in enumerate(attns):
        where[a.q_norm], where[a.k_norm] = (i, "q"), (i, "k")

    def hook(module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        i, name = where[module]
        check_tokens(out.shape[-2])
        seen[i, name] = out
        if (i, "q") in seen and (i, "k") in seen:  # q_norm runs before k_norm in timm; either order works
            rows[i] = cls_attention_row(seen.pop((i, "q")), seen.pop((i, "k")), float(attns[i].scale))

    with _hooks(list(where), hook):
        yield rows


@contextmanager
def _rollout_hooks(attns: Sequence[nn.Module], check_tokens: Callable[[int], None]) -> Iterator[dict]:
    """Hook ``attn_drop`` of each (unfused) Attention in `attns`; yields a dict whose "rollout" entry
    becomes the rollout product (N, T, T) float32 over the blocks run so far."""
    state: dict[str, Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple, _out: Tensor) -> None:
        a = inputs[0].detach()  # (N, heads, T, T) post-softmax
        check_tokens(a.shape[-1])
        a = a.float().mean(1)  # (N, T, T)
        a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        prev = state.get("rollout")
        state["rollout"] = a if prev is None else torch.bmm(a, prev)

    with _hooks([a.attn_drop for a in attns], hook):
        yield state


def forward_with_heatmaps(
    model: nn.Module,
    images: Tensor,
    kind: str = "cls_last",
    block: int = -1,
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward pass giving logits, pre-logit features and CLS-attention heatmaps.

    Args:
        model: a timm ``VisionTransformer`` (with a class token). Usually in eval mode.
        images: (N, 3, H, W) batch, already normalised for the model.
        kind: a key of HEATMAP_KINDS. ``"cls_last"``: CLS-to-patch attention of block ``block``, head
            mean; ``"cls_heads"``: the same per head; ``"cls_all"``: the same per head of every block;
            ``"rollout"``: attention rollout through all blocks, i.e. the product of row-normalised
            (head-mean attention + identity), later blocks on the left; the heatmap is the CLS row's
            patch entries.
        block: which block a kind of one block reads (negative indices count from the end).

    Returns:
        ``(logits, features, heatmaps)``: logits (N, num_classes) equal to ``model(images)``;
        features (N, D) equal to ``model.forward_head(tokens, pre_logits=True)``; heatmaps float32,
        detached, non-negative: (N, grid_h, grid_w) for ``cls_last`` and ``rollout``, (N, heads, grid_h,
        grid_w) for ``cls_heads``, (N, depth * heads, grid_h, grid_w) for ``cls_all`` (channel
        ``block * heads + head``). Each map sums to at most 1 (1 minus the attention the CLS query pays
        to the prefix tokens).
    """
    if kind not in HEATMAP_KINDS:
        raise ValueError(f"unknown heatmap kind {kind!r}; choose one of {tuple(HEATMAP_KINDS)}.")
    _check_model(model)
    if images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) batch, got shape {tuple(images.shape)}.")
    spec, blocks = HEATMAP_KINDS[kind], list(model.blocks)
    npt = int(model.num_prefix_tokens)
    gh, gw = _grid(model, images)
    attns = [blocks[i].attn for i in spec.blocks(_resolve_block(block, len(blocks)), len(blocks))]
    check_tokens = _token_check(npt, gh, gw)
    if isinstance(spec, RolloutKind):
        with _unfused(attns), _rollout_hooks(attns, check_tokens) as state:
            tokens = model.forward_features(images)
    else:
        with _cls_row_hooks(attns, check_tokens) as rows:
            tokens = model.forward_features(images)
    features = model.forward_head(tokens, pre_logits=True)
    with torch.autocast(device_type=features.device.type, enabled=False):  # fp32 logits under mixed precision
        logits = model.head(features.float())

    n = images.shape[0]
    if isinstance(spec, RolloutKind):
        return logits, features, state["rollout"][:, 0, npt:].reshape(n, gh, gw).contiguous()
    maps = spec.combine(torch.cat(rows, dim=1)[:, :, npt:])  # rows: (N, blocks * heads, patches), block-major
    return logits, features, maps.reshape(n, *maps.shape[1:-1], gh, gw).contiguous()


# The one rule for heatmap arrays with and without a channel axis.
#
# Single-map kinds (`cls_last`, `rollout`) are stored as (N, h, w); multi-channel kinds (`cls_heads`:
# one channel per head, `cls_all`: channel = block * heads + head) as (N, C, h, w). Every reader goes
# through `as_channels`, so both shapes take one code path.

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def as_channels(heatmaps: Array) -> Array:
    """Return `heatmaps` (N, h, w) or (N, C, h, w) as (N, C, h, w) (a view; C = 1 for 3-D input).

    Raises ValueError for any other number of dimensions.
    """
    if heatmaps.ndim == 3:
        return heatmaps[:, None]
    if heatmaps.ndim == 4:
        return heatmaps
    raise ValueError(f"heatmaps must have shape (N, h, w) or (N, C, h, w), got {tuple(heatmaps.shape)}")


def display_map(heatmap: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Return one image's heatmap (h, w) or (C, h, w) as the (h, w) map to show: channel `channel`, or the
    channel mean when None (for `cls_heads` that is the head mean, i.e. the `cls_last` map)."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim == 2:
        return heatmap
    if heatmap.ndim != 3:
        raise ValueError(f"a heatmap must have shape (h, w) or (C, h, w), got {heatmap.shape}")
    if channel is None:
        return heatmap.mean(axis=0)
    if not -heatmap.shape[0] <= channel < heatmap.shape[0]:
        raise ValueError(f"channel {channel} is out of range for a heatmap of {heatmap.shape[0]} channels")
    return heatmap[channel]
