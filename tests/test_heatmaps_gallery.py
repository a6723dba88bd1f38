"""Gallery plot of ID/OOD images with their heatmaps laid over the crop the model saw."""
import numpy as np
import pytest
from PIL import Image

from wildcapture.heatmaps.gallery import plot_heatmap_gallery
from wildcapture.heatmaps.gallery import draw_heatmap_gallery


def test_gallery_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    id_imgs = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)) for _ in range(2)]
    ood_imgs = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)]
    out = plot_heatmap_gallery(id_imgs, rng.random((2, 4, 4)), ood_imgs, rng.random((1, 4, 4)),
                               tmp_path / "sub" / "gallery.png", titles=["fox", "deer", "dog"], input_size=(16, 16))
    assert out.is_file() and out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_overlay_covers_exactly_the_centre_crop():
    """A 60x40 image resized for a 16x16 input becomes 24x16; the centre crop keeps columns 4..20 of 24,
    i.e. original columns 10..50 and every row. Drawn at pixel centres, pixel column i spans i-0.5..i+0.5."""
    wide = np.zeros((40, 60, 3), np.uint8)
    tall = np.zeros((60, 40, 3), np.uint8)
    hm = np.random.default_rng(1).random((2, 4, 4))
    fig = draw_heatmap_gallery([wide], hm[:1], [tall], hm[1:], input_size=(16, 16))
    overlays = [fig.axes[i] for i in (2, 5)]  # per row: image, heatmap, overlay (colorbars are added after)
    assert overlays[0].images[1].get_extent() == [9.5, 49.5, 39.5, -0.5]
    assert overlays[1].images[1].get_extent() == [-0.5, 39.5, 49.5, 9.5]
    for ax, (width, height) in zip(overlays, ((60, 40), (40, 60))):
        assert ax.get_xlim() == (-0.5, width - 0.5) and ax.get_ylim() == (height - 0.5, -0.5)
        np.testing.assert_array_equal(ax.images[0].get_array(), np.zeros((height, width, 3), np.uint8))
    np.testing.assert_allclose(overlays[0].images[1].get_array(), hm[0])


def test_multichannel_heatmaps_show_the_mean_or_a_chosen_channel():
    maps = np.random.default_rng(2).random((1, 3, 2, 2)).astype(np.float32)
    img = np.zeros((8, 8, 3), np.uint8)
    for channel, expected in ((None, maps[0].mean(0)), (2, maps[0, 2]), (-3, maps[0, 0])):
        fig = draw_heatmap_gallery([img], maps, [], None, input_size=(8, 8), channel=channel)
        grid, overlay = fig.axes[1].images[0], fig.axes[2].images[1]
        np.testing.assert_allclose(grid.get_array(), expected, rtol=1e-6)
        np.testing.assert_allclose(overlay.get_array(), expected, rtol=1e-6)
        assert grid.norm.vmin == 0 and grid.norm.vmax == pytest.approx(expected.max())
    assert "mean of 3 channels" in draw_heatmap_gallery([img], maps, [], None, (8, 8)).axes[1].get_title()
    with pytest.raises(ValueError, match="channel 3 is out of range"):
        draw_heatmap_gallery([img], maps, [], None, input_size=(8, 8), channel=3)


def test_gallery_checks_counts(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="^draw_heatmap_gallery needs at least one image"):
        plot_heatmap_gallery([], None, [], None, tmp_path / "g.png", input_size=(8, 8))
    with pytest.raises(ValueError, match="ID heatmaps"):
        plot_heatmap_gallery([img, img], np.zeros((1, 2, 2)), [], np.zeros((0, 2, 2)),
                             tmp_path / "g.png", input_size=(8, 8))
    with pytest.raises(ValueError, match="titles"):
        plot_heatmap_gallery([img], np.zeros((1, 2, 2)), [], None, tmp_path / "g.png",
                             titles=["a", "b"], input_size=(8, 8))
    with pytest.raises(ValueError, match="channels"):
        plot_heatmap_gallery([img], np.zeros((1, 2, 2, 2)), [img], np.zeros((1, 3, 2, 2)), tmp_path / "g.png",
                             input_size=(8, 8))


def test_stage2_gallery_channel_is_checked_against_the_kind_before_inference():
    from timm.models.vision_transformer import VisionTransformer

    from wildcapture.errors import ConfigError
    from wildcapture.stages.evaluate_classifier import check_gallery_channel

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=2)
    for kind, count in (("cls_heads", 3), ("cls_all", 6), ("cls_last", 1)):
        for channel in (None, 0, count - 1, -count):
            check_gallery_channel({"gallery_channel": channel, "heatmap": {"kind": kind}}, model)
        for channel in (count, -count - 1):
            with pytest.raises(ConfigError, match=f"gallery_channel={channel} is out of range .* {count} channel"):
                check_gallery_channel({"gallery_channel": channel, "heatmap": {"kind": kind}}, model)
