"""forward_with_heatmaps against an independent recomputation of timm's attention."""
import numpy as np
import pytest
import timm
import torch
from attention_reference import manual_attention
from timm.models.vision_transformer import VisionTransformer

from wildcapture.attention import forward_with_heatmaps, heatmap_channels, HEATMAP_KINDS
from wildcapture.attention import cls_attention_row
from wildcapture.attention import as_channels


def _vit(seed: int = 0, **kw) -> VisionTransformer:
    """Tiny ViT with enlarged random weights so attention is far from uniform."""
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3)
    args.update(kw)
    model = VisionTransformer(**args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                gain = 3 if "q_norm" in name or "k_norm" in name else 1  # qk-norm: peaked attention too
                p.copy_(gain * (1 + 0.1 * torch.randn_like(p)))
            else:
                p.normal_(0, 0.3)
    return model.eval()


VARIANTS = {
    "cls": {},
    "cls+4reg": {"reg_tokens": 4},
    "cls+2reg_no_embed_class": {"reg_tokens": 2, "no_embed_class": True},
    "nonsquare": {"img_size": (32, 48)},
    "qknorm": {"qk_norm": True},
    "cls+4reg+qknorm": {"reg_tokens": 4, "qk_norm": True},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("block", [0, 1, -1, -2])
def test_cls_last_matches_manual_attention(variant, block):
    model = _vit(**VARIANTS[variant])
    h, w = model.patch_embed.img_size
    x = torch.randn(3, 3, h, w)
    with torch.no_grad():
        _, _, hm = forward_with_heatmaps(model, x, kind="cls_last", block=block)
        a = manual_attention(model, x, block % len(model.blocks))
    npt = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid_size
    expected = a[:, :, 0, npt:].mean(1).reshape(3, gh, gw)
    assert hm.shape == (3, gh, gw) and hm.dtype == torch.float32
    torch.testing.assert_close(hm, expected, atol=1e-5, rtol=0)
    # not trivially uniform
    assert hm.amax() > 2.0 / (gh * gw)
    # sums to 1 minus what the CLS query gives the prefix tokens
    prefix = a[:, :, 0, :npt].mean(1).sum(-1)
    torch.testing.assert_close(hm.sum((1, 2)), 1 - prefix, atol=1e-5, rtol=0)
    assert (hm >= 0).all() and (hm.sum((1, 2)) <= 1 + 1e-6).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("block", [0, -1])
def test_cls_heads_matches_manual_attention_per_head(variant, block):
    model = _vit(**VARIANTS[variant])
    h, w = model.patch_embed.img_size
    x = torch.randn(3, 3, h, w)
    with torch.no_grad():
        _, _, hm = forward_with_heatmaps(model, x, kind="cls_heads", block=block)
        _, _, mean_map = forward_with_heatmaps(model, x, kind="cls_last", block=block)
        a = manual_attention(model, x, block % len(model.blocks))
    npt, heads = model.num_prefix_tokens, model.blocks[0].attn.num_heads
    gh, gw = model.patch_embed.grid_size
    assert hm.shape == (3, heads, gh, gw) == (3, heatmap_channels("cls_heads", len(model.blocks), heads), gh, gw)
    for head in range(heads):
        torch.testing.assert_close(hm[:, head], a[:, head, 0, npt:].reshape(3, gh, gw), atol=1e-5, rtol=0)
        torch.testing.assert_close(hm[:, head].sum((1, 2)), 1 - a[:, head, 0, :npt].sum(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(hm[:, 0], hm[:, 1], atol=1e-3)  # heads differ: nothing was averaged
    torch.testing.assert_close(hm.mean(1), mean_map, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["cls", "cls+4reg", "cls+2reg_no_embed_class", "qknorm", "cls+4reg+qknorm"])
def test_cls_all_matches_manual_attention_per_block_and_head(variant):
    model = _vit(depth=3, **VARIANTS[variant])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, _, hm = forward_with_heatmaps(model, x, kind="cls_all")
        manual = [manual_attention(model, x, b) for b in range(3)]
    npt, heads = model.num_prefix_tokens, model.blocks[0].attn.num_heads
    assert hm.shape == (2, 3 * heads, 4, 4) and hm.dtype == torch.float32
    for b in range(3):
        for head in range(heads):
            torch.testing.assert_close(hm[:, b * heads + head], manual[b][:, head, 0, npt:].reshape(2, 4, 4),
                                       atol=1e-5, rtol=0)
    assert not torch.allclose(hm[:, :heads], hm[:, heads:2 * heads], atol=1e-3)  # blocks differ


def test_default_is_last_block_and_timm_factory_model():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats, hm = forward_with_heatmaps(model, x)
        a = manual_attention(model, x, len(model.blocks) - 1)
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    assert feats.shape == (2, 192) and hm.shape == (2, 4, 4)
    torch.testing.assert_close(hm, a[:, :, 0, 1:].mean(1).reshape(2, 4, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["cls", "cls+4reg"])
def test_rollout_matches_hand_computation(variant):
    model = _vit(**VARIANTS[variant])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, _, hm = forward_with_heatmaps(model, x, kind="rollout")
        a1 = manual_attention(model, x, 0).mean(1).double().numpy()
        a2 = manual_attention(model, x, 1).mean(1).double().numpy()
    eye = np.eye(a1.shape[-1])
    r1 = (a1 + eye) / (a1 + eye).sum(-1, keepdims=True)
    r2 = (a2 + eye) / (a2 + eye).sum(-1, keepdims=True)
    rollout = r2 @ r1
    npt = model.num_prefix_tokens
    expected = rollout[:, 0, npt:].reshape(2, 4, 4)
    np.testing.assert_allclose(hm.numpy(), expected, atol=1e-5, rtol=0)
    assert (hm >= 0).all() and (hm.sum((1, 2)) <= 1 + 1e-6).all()


@pytest.mark.parametrize("kind", HEATMAP_KINDS)
def test_logits_and_features_equal_plain_forward(kind):
    model = _vit(reg_tokens=2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits, feats, _ = forward_with_heatmaps(model, x, kind=kind)
        ref_logits = model(x)
        ref_feats = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=0)


def _spatial_model(**kw) -> VisionTransformer:
    """One block; CLS query = identity-projected keys; zero patches give zero keys."""
    model = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=1, num_classes=3,
                              qkv_bias=False, **kw).eval()
    d, p = 16, 8
    u = torch.tensor([1.0, -1.0] * (d // 2))
    with torch.no_grad():
        model.pos_embed.zero_()
        if model.reg_token is not None:
            model.reg_token.zero_()
        model.cls_token.copy_(u.view(1, 1, d))
        model.patch_embed.proj.weight.copy_((u / (3 * p * p)).view(d, 1, 1, 1).expand(d, 3, p, p))
        model.patch_embed.proj.bias.zero_()
        qkv = model.blocks[0].attn.qkv.weight
        qkv.zero_()
        qkv[:d].copy_(3 * torch.eye(d))
        qkv[d:2 * d].copy_(3 * torch.eye(d))
    return model


@pytest.mark.parametrize("img_size,reg", [((32, 32), 0), ((32, 48), 0), ((32, 48), 3)])
def test_patch_rc_lands_in_cell_rc(img_size, reg):
    model = _spatial_model(img_size=img_size, reg_tokens=reg)
    gh, gw = model.patch_embed.grid_size
    cells = [(0, 0), (0, gw - 1), (gh - 1, 0), (gh - 1, gw - 1), (1, 2), (2, 1)]
    x = torch.zeros(len(cells), 3, *img_size)
    for i, (r, c) in enumerate(cells):
        x[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 1.0
    for kind in HEATMAP_KINDS:
        with torch.no_grad():
            _, _, hm = forward_with_heatmaps(model, x, kind=kind)
        hm = as_channels(hm).mean(1)  # one block, one head: every kind's channels are the same map
        assert hm.shape == (len(cells), gh, gw)
        for i, (r, c) in enumerate(cells):
            flat = int(hm[i].argmax())
            assert divmod(flat, gw) == (r, c), (kind, (r, c), hm[i])


def test_dynamic_img_size_uses_input_grid():
    model = _vit(dynamic_img_size=True)
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        logits, _, hm = forward_with_heatmaps(model, x)
        a = manual_attention(model, x, 1)
    assert hm.shape == (2, 6, 4)
    torch.testing.assert_close(hm, a[:, :, 0, 1:].mean(1).reshape(2, 6, 4), atol=1e-5, rtol=0)


def _hooks_left(model: VisionTransformer) -> bool:
    return any(m._forward_hooks for blk in model.blocks
               for m in (blk.attn.attn_drop, blk.attn.q_norm, blk.attn.k_norm))


@pytest.mark.parametrize("kind", ["cls_last", "cls_heads", "cls_all"])
def test_cls_kinds_keep_every_block_fused(kind):
    model = _vit(depth=3, qk_norm=True)
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, a: seen.append(m.attn.fused_attn))
             for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = True
    with torch.no_grad():
        forward_with_heatmaps(model, torch.randn(1, 3, 32, 32), kind=kind, block=1)
    for h in hooks:
        h.remove()
    assert seen == [True, True, True]
    assert not _hooks_left(model)


def test_rollout_unfuses_every_block_and_flags_restored():
    model = _vit(depth=3)
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, a: seen.append(m.attn.fused_attn))
             for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = True
    with torch.no_grad():
        forward_with_heatmaps(model, torch.randn(1, 3, 32, 32), kind="rollout")
    assert seen == [False, False, False]
    for h in hooks:
        h.remove()
    assert [blk.attn.fused_attn for blk in model.blocks] == [True, True, True]
    assert not _hooks_left(model)


def test_fused_scale_is_timms_default():
    """The fused path (SDPA) scales by head_dim ** -0.5; the CLS row uses attn.scale: they must agree."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False)
    assert all(blk.attn.scale == blk.attn.head_dim ** -0.5 for blk in model.blocks)


def test_cls_row_is_float32_from_bf16_q_and_k_under_autocast():
    torch.manual_seed(0)
    q, k = (3 * torch.randn(2, 4, 17, 8)).bfloat16(), (3 * torch.randn(2, 4, 17, 8)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        row = cls_attention_row(q, k, 8 ** -0.5)
    expected = torch.softmax(q[:, :, :1].double() * 8 ** -0.5 @ k.double().transpose(-2, -1), -1)[:, :, 0]
    assert row.dtype == torch.float32 and row.shape == (2, 4, 17)
    torch.testing.assert_close(row.double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", HEATMAP_KINDS)
def test_flags_and_hooks_restored_after_exception(kind):
    model = _vit(depth=3)
    model.blocks[1].attn.fused_attn = False  # mixed start state must come back exactly
    before = [blk.attn.fused_attn for blk in model.blocks]

    def boom(_m, _a):
        raise RuntimeError("boom")

    h = model.blocks[2].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        forward_with_heatmaps(model, torch.randn(1, 3, 32, 32), kind=kind)
    h.remove()
    assert [blk.attn.fused_attn for blk in model.blocks] == before
    assert not _hooks_left(model)


def test_autocast_and_grad_mode():
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, _, ref = forward_with_heatmaps(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _, hm = forward_with_heatmaps(model, x)
    assert hm.dtype == torch.float32 and logits.shape == (2, 3)
    torch.testing.assert_close(hm, ref, atol=3e-2, rtol=0)
    logits, _, hm = forward_with_heatmaps(model, x)  # grad enabled
    assert logits.requires_grad and not hm.requires_grad


def test_errors_are_clear():
    model = _vit()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="cls_last.*rollout"):
        forward_with_heatmaps(model, x, kind="gradcam")
    with pytest.raises(ValueError, match=r"-2\.\.1"):
        forward_with_heatmaps(model, x, block=2)
    with pytest.raises(ValueError, match=r"-2\.\.1"):
        forward_with_heatmaps(model, x, block=-3)
    with pytest.raises(TypeError, match="VisionTransformer"):
        forward_with_heatmaps(torch.nn.Linear(3, 3), x)
    no_cls = _vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        forward_with_heatmaps(no_cls, x)
