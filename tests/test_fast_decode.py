"""Fast decoding (data.images.load_rgb_at_least): scale choice, closeness to a full decode, exactness at scale 1, EXIF orientation, bad files."""
import numpy as np
import pytest
import torch
from PIL import Image

from wildcapture.data.images import load_rgb
from wildcapture.data.transforms import build_transforms
from wildcapture.errors import DatasetError
from wildcapture.data.images import decode_scale, load_rgb_at_least

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the ViT uses
# Mean |difference| of normalised model inputs, fast vs full decode, over a region both decode alike.
# Measured: 0.006 (whole image, 224 px), <= 0.005 (crops) on the synthetic scene below; 0.013 and 0.017
# (whole frame, 224 px) on the two real frames of wildcapture_samples (benchmarks/bench_decode.py).
MAX_MEAN_DIFF = 0.02


def _scene(width: int = 2048, height: int = 1152, seed: int = 0) -> Image.Image:
    """Return a camera-frame-like RGB image: smooth 1/f-like noise (octaves of random values, amplitude
    proportional to wavelength), built at 1/4 size and upscaled so that it is as soft as a real frame."""
    rng = np.random.default_rng(seed)
    small_w, small_h = width // 4, height // 4
    total = np.zeros((small_h, small_w, 3))
    for level in range(7):
        cells = rng.integers(0, 256, (small_h >> level, small_w >> level, 3), dtype=np.uint8)
        layer = Image.fromarray(cells).resize((small_w, small_h), Image.Resampling.BICUBIC)
        total += 2 ** level * np.asarray(layer, dtype=np.float64)
    total = (total - total.mean()) / total.std() * 40 + 120
    small = Image.fromarray(np.clip(total, 0, 255).astype(np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Path of a 2048x1152 JPEG (quality 90) of `_scene`."""
    path = tmp_path_factory.mktemp("fast_decode") / "scene.jpg"
    _scene().save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def scene_full(scene) -> Image.Image:
    return load_rgb(scene)


def _model_input(image: Image.Image, size: int) -> torch.Tensor:
    return build_transforms({}, (size, size), MEAN, STD)[1](image)


def _mean_diff(a: Image.Image, b: Image.Image, size: int) -> float:
    x, y = _model_input(a, size), _model_input(b, size)
    assert x.shape == y.shape == (3, size, size)
    return (x - y).abs().mean().item()


def test_decode_scale_picks_smallest_scale_keeping_min_size():
    assert decode_scale((2048, 1152), 224) == 1 / 4  # 1152 / 4 = 288 >= 224; 1152 / 8 = 144 < 224
    assert decode_scale((400, 300), 224) == 1  # 300 / 2 = 150 < 224
    assert decode_scale((1000, 1000), 16) == 1 / 8  # 1000 / 8 = 125 >= 16, and 1/8 is the smallest scale
    assert decode_scale((100, 50), 224) == 1  # already smaller than the input: no reduction
    assert decode_scale((2048, 1152), (144, 512)) == 1 / 4  # (height, width): 1152 / 8 = 144 but 2048 / 8 < 512
    assert decode_scale((2048, 1152), (144, 256)) == 1 / 8


@pytest.mark.parametrize("size, decoded", [(224, (512, 288)), (16, (256, 144))])
def test_whole_image_close_to_full_decode(scene, scene_full, size, decoded):
    fast = load_rgb_at_least(scene, None, size)
    assert fast.size == decoded and fast.mode == "RGB"  # 1/4 and 1/8 of 2048x1152
    assert _mean_diff(fast, scene_full, size) < MAX_MEAN_DIFF


def test_size_not_divisible_by_the_scale_still_decodes_at_that_scale(tmp_path):
    path = tmp_path / "odd.jpg"
    _scene(2050, 1154).save(path, quality=90)
    # 1/4 scale: ceil(2050 / 4) x ceil(1154 / 4); asking draft for that size would give 1/2 (2050 // 513 = 3)
    assert load_rgb_at_least(path, None, 224).size == (513, 289)


@pytest.mark.parametrize("box, size, pixels, decoded", [
    ((0.125, 0.25, 0.5, 0.5), 224, (256, 288, 1280, 864), (512, 288)),  # 1024x576 px: 1/2 scale
    ((0.125, 0.5, 0.25, 0.25), 16, (256, 576, 768, 864), (64, 36)),  # 512x288 px: 1/8 scale
])
def test_crop_on_decoded_grid_close_to_full_decode_crop(scene, scene_full, box, size, pixels, decoded):
    fast = load_rgb_at_least(scene, box, size)
    assert fast.size == decoded
    assert _mean_diff(fast, scene_full.crop(pixels), size) < MAX_MEAN_DIFF


def test_crop_off_grid_is_box_rounded_out_to_decoded_pixels(scene, scene_full):
    # box (204.8, 345.6) to (819.2, 806.4) px -> pixels (204, 345, 820, 807), 616x462 -> 1/8 scale, 256x144 decoded;
    # there (25.5, 43.1) to (102.5, 100.9) -> (25, 43, 103, 101): 78x58, full-resolution (200, 344, 824, 808)
    fast = load_rgb_at_least(scene, (0.1, 0.3, 0.3, 0.4), 16)
    assert fast.size == (78, 58)
    assert _mean_diff(fast, scene_full.crop((200, 344, 824, 808)), 16) < MAX_MEAN_DIFF


@pytest.mark.parametrize("box, margin, pixels", [
    ((0.5, 0.5, 0.15, 0.2), 0.0, (1024, 576, 1332, 807)),  # 308x231 px: too small to reduce for 224
    ((0.5, 0.5, 0.15, 0.2), 0.1, (993, 552, 1362, 830)),  # widened by 0.015 x 2048 and 0.02 x 1152 each side
    ((0.9, 0.9, 0.2, 0.2), 0.0, (1843, 1036, 2048, 1152)),  # clipped to the image
])
def test_scale_one_is_exactly_full_decode_crop(scene, scene_full, box, margin, pixels):
    fast = load_rgb_at_least(scene, box, 224, margin)
    assert np.array_equal(np.asarray(fast), np.asarray(scene_full.crop(pixels)))


def test_other_formats_decode_in_full_with_same_crop(tmp_path):
    path = tmp_path / "scene.png"
    _scene(400, 300).convert("L").save(path)  # grayscale, as night infrared: converted to RGB as load_rgb does
    fast = load_rgb_at_least(path, (0.25, 0.5, 0.5, 0.5), 16)
    assert fast.mode == "RGB"
    assert np.array_equal(np.asarray(fast), np.asarray(load_rgb(path).crop((100, 150, 300, 300))))


def test_exif_orientation_box_in_displayed_coordinates(tmp_path):
    displayed = Image.new("RGB", (1152, 2048), (90, 110, 70))  # portrait as displayed
    displayed.paste((230, 20, 20), (576, 1024, 864, 1280))  # red square = the box below
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape; shown rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    displayed.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    box = (0.5, 0.5, 0.25, 0.125)  # (576, 1024) to (864, 1280) px of the displayed image

    fast = load_rgb_at_least(path, box, 16)
    assert fast.size == (36, 32)  # 288x256 px at 1/8
    assert np.abs(np.asarray(fast, dtype=float) - (230, 20, 20)).mean() < 5
    assert _mean_diff(fast, load_rgb(path).crop((576, 1024, 864, 1280)), 16) < MAX_MEAN_DIFF


def _jpeg_bytes(tmp_path) -> bytes:
    path = tmp_path / "small.jpg"
    _scene(256, 192).save(path, quality=90)
    return path.read_bytes()


@pytest.mark.parametrize("name, content, box, message", [
    ("truncated.jpg", lambda b: b[:len(b) // 2], None, "cannot read image"),
    ("empty.jpg", lambda b: b"", None, "cannot read image"),
    ("text.jpg", lambda b: b"not an image\n", None, "cannot read image"),
    ("missing.jpg", None, None, "cannot read image"),
    ("nan.jpg", lambda b: b, (float("nan"), 0.0, 0.1, 0.1), "not finite"),
])
def test_bad_file_or_box_raises_dataset_error_naming_the_file(tmp_path, name, content, box, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content(_jpeg_bytes(tmp_path)))
    with pytest.raises(DatasetError, match=message) as info:
        load_rgb_at_least(path, box, 16)  # 16 px: decoded at 1/8, which still reads every byte
    assert str(path) in str(info.value)
