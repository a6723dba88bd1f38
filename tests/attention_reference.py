"""Attention of a timm ViT recomputed outside timm's Attention module: the reference for heatmap tests."""
import torch
from timm.models.vision_transformer import VisionTransformer


def manual_attention(model: VisionTransformer, images: torch.Tensor, block: int) -> torch.Tensor:
    """Return the post-softmax attention (N, heads, T, T) of block `block` (>= 0): the blocks before it run as
    the model runs them; this block's softmax(q k^T * scale) is computed here from its qkv projection."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for blk in model.blocks[:block]:
        x = blk(x)
    blk = model.blocks[block]
    attn = blk.attn
    y = blk.norm1(x)
    n, t, _ = y.shape
    qkv = attn.qkv(y).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)
