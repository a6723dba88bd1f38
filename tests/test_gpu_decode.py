"""`detect.py --decode gpu`, run with device="cpu": torchvision's decode_jpeg takes the device as an argument,
so the byte-reading workers, the batched decode, the crop/resize/normalise and the fallbacks run here too."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from PIL import Image

from wildcapture.data.images import load_rgb
from wildcapture.data.transforms import build_transforms
from wildcapture.detection.engine import DetectionImages
from wildcapture.detection.gpu_decode import (JpegBytes, check_interpolation, decode_all, device_batches,
                                              device_decodable, prepare)
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.detection.season import Item
from wildcapture.errors import ConfigError
from wildcapture.megadetector import pixel_box
from wildcapture.paths import REPO_ROOT

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = (32, 32)
CPU = torch.device("cpu")
GREY_LEVEL = 1 / 255 / min(STD)  # one uint8 step, in normalised units (0.0175)


def _scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random scene with fine texture, so resampling differences show."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, height // 16, width // 16, generator=g)
    img = Fn.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    img = (img + 0.15 * torch.rand(1, 3, height, width, generator=g)).clamp(0, 1)
    return Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def _eval_tf():
    return build_transforms({}, SIZE, MEAN, STD, "bicubic")[1]


def _bytes(path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


@pytest.fixture
def files(tmp_path):
    paths = {"jpeg": tmp_path / "a.jpg", "png": tmp_path / "b.png", "rotated": tmp_path / "c.jpg",
             "grey": tmp_path / "d.jpg", "corrupt": tmp_path / "e.jpg", "missing": tmp_path / "none.jpg"}
    _scene(320, 240).save(paths["jpeg"], quality=90)
    _scene(200, 150, 1).save(paths["png"])
    exif = Image.Exif()
    exif[0x0112] = 6
    _scene(240, 180, 2).save(paths["rotated"], quality=90, exif=exif)
    _scene(160, 160, 3).convert("L").save(paths["grey"], quality=90)
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    return paths


def test_device_decodable_only_for_upright_rgb_or_grey_jpegs(files):
    read = {name: path.read_bytes() if path.exists() else b"" for name, path in files.items()}
    assert device_decodable(read["jpeg"]) and device_decodable(read["grey"])
    assert not any(device_decodable(read[name]) for name in ("png", "rotated", "corrupt", "missing"))


@pytest.mark.parametrize("bbox", [None, (0.1, 0.2, 0.5, 0.6), (0.3, 0.3, 0.15, 0.12)])
def test_device_pixels_equal_a_full_decode_and_the_eval_transform(files, bbox):
    """Against PIL's full decode + crop + eval transform the device path differs only by its resize's
    rounding: well under one grey level on average, at most two anywhere. Against the CPU path (which
    decodes large crops at a reduced DCT scale) it differs by no more than that path differs from a full decode."""
    full = load_rgb(files["jpeg"])
    reference = _eval_tf()(full if bbox is None else full.crop(pixel_box(bbox, full.size, 0.0)))
    pixels = decode_all([_bytes(files["jpeg"])], CPU)[0]
    device = prepare(pixels, bbox, 0.0, SIZE, check_interpolation("bicubic"), MEAN, STD)
    assert device.shape == (3, *SIZE) and device.dtype == torch.float32
    assert (device - reference).abs().mean() < 0.1 * GREY_LEVEL
    assert (device - reference).abs().max() <= 2 * GREY_LEVEL
    cpu_path, _, reason = DetectionImages([Item(0, "a.jpg", str(files["jpeg"]), 0, bbox)], _eval_tf(), SIZE, 0.0)[0]
    assert reason == ""
    draft_error = (cpu_path - reference).abs().mean()
    assert (device - cpu_path).abs().mean() <= draft_error + 0.1 * GREY_LEVEL


def test_batches_fall_back_per_item_like_the_cpu_path(files):
    boxes = {"jpeg": (0.2, 0.1, 0.6, 0.7)}
    items = [Item(i, name, str(path), 0, boxes.get(name)) for i, (name, path) in enumerate(files.items())]
    items.append(Item(len(items), "nan box", str(files["jpeg"]), 0, (float("nan"), 0.1, 0.2, 0.2)))
    cpu = DetectionImages(items, _eval_tf(), SIZE, 0.0)
    got = list(device_batches(cpu, range(len(items)), 4, 0, CPU, {"mean": MEAN, "std": STD,
                                                                   "interpolation": "bicubic"}))
    images = torch.cat([b[0] for b in got])
    indices = torch.cat([b[1] for b in got]).tolist()
    reasons = [r for b in got for r in b[2]]
    assert [len(b[1]) for b in got] == [4, 3] and indices == list(range(len(items)))
    for i, item in enumerate(items):
        expected, _, expected_reason = cpu[i]
        assert bool(reasons[i]) == bool(expected_reason), item.image
        assert reasons[i] == expected_reason or item.image == "corrupt"  # same failure, maybe other words
        if item.image in ("jpeg", "grey"):  # decoded on the device: a full decode + the eval transform
            full = load_rgb(item.path)
            expected = _eval_tf()(full if item.bbox is None else full.crop(pixel_box(item.bbox, full.size, 0.0)))
            assert (images[i] - expected).abs().mean() < 0.1 * GREY_LEVEL, item.image
        elif not expected_reason:  # decoded by the CPU path in the worker: its very pixels
            torch.testing.assert_close(images[i], expected, atol=0, rtol=0)
    assert [items[i].image for i, r in enumerate(reasons) if r] == ["corrupt", "missing", "nan box"]


def test_device_decode_failure_goes_to_the_cpu_path(files, monkeypatch):
    """A file the device decoder refuses (after the batch fails, one by one) is decoded by the CPU path."""
    import wildcapture.detection.gpu_decode as gd

    real = gd.decode_jpeg
    bad = files["grey"].read_bytes()

    def refuse_grey(data, **kw):
        many = isinstance(data, list)
        if any(bytes(d.numpy()) == bad for d in (data if many else [data])):
            raise RuntimeError("nvjpeg refuses it")
        return real(data, **kw)

    monkeypatch.setattr(gd, "decode_jpeg", refuse_grey)
    items = [Item(0, "jpeg", str(files["jpeg"]), 0), Item(1, "grey", str(files["grey"]), 0)]
    assert [d is None for d in decode_all([_bytes(files["jpeg"]), _bytes(files["grey"])], CPU)] == [False, True]
    cpu = DetectionImages(items, _eval_tf(), SIZE, 0.0)
    (images, _, reasons), = device_batches(cpu, [0, 1], 2, 0, CPU, {"mean": MEAN, "std": STD,
                                                                      "interpolation": "bicubic"})
    assert reasons == ["", ""]
    torch.testing.assert_close(images[1], cpu[1][0])


def test_workers_send_bytes_only_for_device_decodable_files(files):
    items = [Item(0, "jpeg", str(files["jpeg"]), 0), Item(1, "png", str(files["png"]), 0)]
    data = JpegBytes(DetectionImages(items, _eval_tf(), SIZE, 0.0))
    image, raw, index, reason = data[0]
    assert raw.dtype == torch.uint8 and raw.numel() == files["jpeg"].stat().st_size and not image.any()
    image, raw, index, reason = data[1]
    assert raw.numel() == 0 and image.abs().sum() > 0 and index == 1 and reason == ""


def test_interpolation_without_a_tensor_resize_is_refused():
    with pytest.raises(ConfigError, match="--decode cpu"):
        check_interpolation("lanczos")


def test_decode_gpu_without_cuda_is_refused_in_one_line(files, tmp_path):
    options = DetectOptions(device="cpu", decode="gpu", html=False)
    with pytest.raises(ConfigError, match="--decode gpu needs a CUDA device.*use --decode cpu"):
        detect(files["jpeg"].parent, tmp_path / "no_cae.pth", tmp_path / "out" / "d.csv", options)
    with pytest.raises(ConfigError, match="--decode must be one of cpu, gpu"):
        DetectOptions(decode="nvjpeg").check()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "detect.py"), str(files["jpeg"].parent), "--device", "cpu",
                             "--decode", "gpu", "--cae", str(tmp_path / "no_cae.pth"), "--out",
                             str(tmp_path / "out" / "d.csv")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--decode gpu needs a CUDA" in result.stderr
