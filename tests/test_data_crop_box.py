"""centre_crop_box: the part of the original image the eval transform keeps, checked against the transform."""
import numpy as np
import pytest
import torch
from PIL import Image

from wildcapture.data.transforms import build_transforms, centre_crop_box

SOURCES = [(60, 40), (64, 48), (37, 101), (200, 33), (99, 100), (16, 16), (250, 7), (13, 200)]
INPUTS = [(16, 16), (7, 7), (12, 20), (20, 12)]


def _coded(width, height):
    """An image whose red channel is the pixel's column and green its row."""
    a = np.zeros((height, width, 3), np.uint8)
    a[..., 0] = np.arange(width)[None, :]
    a[..., 1] = np.arange(height)[:, None]
    return Image.fromarray(a)


def test_hand_computed_boxes():
    # 60x40 -> Resize(16): 24x16, crop left round(4) = 4 of 24 -> 4 * 60/24 = 10 .. 20 * 60/24 = 50
    assert centre_crop_box(60, 40, (16, 16)) == (10.0, 0.0, 50.0, 40.0)
    assert centre_crop_box(40, 60, (16, 16)) == (0.0, 10.0, 40.0, 50.0)
    assert centre_crop_box(30, 10, (10, 10)) == (10.0, 0.0, 20.0, 10.0)
    assert centre_crop_box(32, 32, (8, 8)) == (0.0, 0.0, 32.0, 32.0)
    # (H, W) = (10, 20) on a 40x40 image: scaled to 20x20, rows 5..15 kept -> 10..30 in the original
    assert centre_crop_box(40, 40, (10, 20)) == (0.0, 10.0, 40.0, 30.0)


@pytest.mark.parametrize("size", INPUTS)
def test_box_predicts_every_pixel_the_transform_keeps(size):
    """With nearest resizing, output pixel (i, j) is the original pixel nearest to where the box maps its
    centre: (x0 + (j + 0.5) * (x1 - x0) / W, y0 + (i + 0.5) * (y1 - y0) / H)."""
    _, eval_tf = build_transforms({}, size, (0, 0, 0), (1, 1, 1), interpolation="nearest")
    for width, height in SOURCES:
        x = eval_tf(_coded(width, height))
        src_x = torch.round(x[0, 0] * 255).numpy()
        src_y = torch.round(x[1, :, 0] * 255).numpy()
        x0, y0, x1, y1 = centre_crop_box(width, height, size)
        mapped_x = x0 + (np.arange(size[1]) + 0.5) * (x1 - x0) / size[1]
        mapped_y = y0 + (np.arange(size[0]) + 0.5) * (y1 - y0) / size[0]
        # a pixel's centre is at index + 0.5; ties (a mapped point on a pixel edge) may go either way
        assert np.abs(src_x + 0.5 - mapped_x).max() <= 0.5 + 1e-9, (width, height)
        assert np.abs(src_y + 0.5 - mapped_y).max() <= 0.5 + 1e-9, (width, height)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
