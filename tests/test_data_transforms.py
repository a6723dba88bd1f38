"""build_transforms: output shapes, exact normalised values, augmentation pipeline."""
import pytest
import torch
from PIL import Image

from wildcapture.data.transforms import build_transforms
from wildcapture.errors import DatasetError

MEAN, STD = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)


def test_eval_shape_and_normalisation():
    _, eval_tf = build_transforms({}, (16, 16), MEAN, STD)
    x = eval_tf(Image.new("RGB", (40, 30), (255, 0, 51)))  # non-square: resize short side + centre crop
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, 51 / 255])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(x, expected[:, None, None].expand_as(x), atol=1e-5)


def test_eval_centre_crop_keeps_middle_and_non_square_size():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third
    _, eval_tf = build_transforms({}, (10, 10), (0, 0, 0), (1, 1, 1), interpolation="nearest")
    assert torch.allclose(eval_tf(image), torch.ones(3, 10, 10))
    _, eval_tf = build_transforms({}, (8, 12), (0, 0, 0), (1, 1, 1))
    assert eval_tf(Image.new("RGB", (50, 60))).shape == (3, 8, 12)


def test_train_augmentation():
    cfg = {"augment": {"hflip": 1.0, "random_resized_crop": 0.5, "color_jitter": 0.3}}
    train_tf, _ = build_transforms(cfg, (24, 24), MEAN, STD)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor", "Normalize"]
    assert train_tf(Image.new("RGB", (50, 37), (10, 20, 30))).shape == (3, 24, 24)
    # hflip=1 without crop/jitter: an exact mirror of the eval output
    train_tf, eval_tf = build_transforms({"augment": {"hflip": 1.0}}, (12, 12), MEAN, STD)
    image = Image.new("RGB", (12, 12))
    image.paste((255, 255, 255), (0, 0, 3, 12))
    assert torch.equal(train_tf(image), eval_tf(image).flip(-1))


def test_bad_augment_value():
    with pytest.raises(DatasetError, match="hflip"):
        build_transforms({"augment": {"hflip": 2}}, (8, 8), MEAN, STD)
    with pytest.raises(DatasetError, match="interpolation"):
        build_transforms({}, (8, 8), MEAN, STD, interpolation="cubic")
