"""`detect.py --decode gpu`: DataLoader workers read file bytes; the main process decodes the batch's JPEGs
on the device (nvJPEG via torchvision's batched `decode_jpeg`), then crops, resizes and normalises there.

The result follows the CPU path (`engine.DetectionImages`): the box is `megadetector.pixel_box` of the
decoded image, the resize and centre crop are `build_transforms`' eval ones (`transforms.cover_size`, the
same interpolation with antialiasing, on uint8 tensors), then mean/std. It is not bit-identical: the CPU
path decodes at a reduced DCT scale (`data.images.load_rgb_at_least`) and resizes with PIL.

An item goes the CPU path instead, decoded in its worker, when the file is not a baseline/progressive
JPEG that decodes to RGB or L, or carries an EXIF orientation other than 1 (torchvision applies EXIF
orientation on the CPU only); in the main process when the device decode fails. A file that cannot be
read, or that the CPU path cannot decode either, is a failure row, as on the CPU path.
"""
from __future__ import annotations

import io
import math
import warnings
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from wildcapture.runtime import make_loader
from wildcapture.data.transforms import cover_size
from wildcapture.detection.engine import DetectionImages
from wildcapture.errors import ConfigError
from wildcapture.megadetector import pixel_box

_MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
          "nearest": InterpolationMode.NEAREST}
_ORIENTATION = 0x0112
_EMPTY = torch.empty(0, dtype=torch.uint8)


def device_decodable(data: bytes) -> bool:
    """Return True if the file `data` is a JPEG the device path decodes as displayed: RGB or L (not CMYK),
    no EXIF orientation other than 1. Reads the header only."""
    if not data.startswith(b"\xff\xd8"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format == "JPEG" and image.mode in ("RGB", "L") and \
                    image.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # a damaged header: let the CPU path name the problem
        return False


class JpegBytes(Dataset):
    """Items -> (3 x H x W float tensor, uint8 file bytes (1-D), index, failure reason or "").

    A device-decodable JPEG comes back as its bytes and a zero image; any other item as the CPU path's
    (`DetectionImages`) image or failure, with empty bytes."""

    def __init__(self, cpu: DetectionImages):
        self.cpu = cpu

    def __len__(self) -> int:
        return len(self.cpu)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        try:
            with open(self.cpu.items[index].path, "rb") as file:
                data = file.read()
        except OSError:
            data = b""  # the CPU path reports the missing or unreadable file
        bbox = self.cpu.items[index].bbox
        if device_decodable(data) and (bbox is None or all(math.isfinite(v) for v in bbox)):
            return torch.zeros(3, *self.cpu.input_size), torch.frombuffer(bytearray(data), dtype=torch.uint8), \
                index, ""
        image, _, reason = self.cpu[index]
        return image, _EMPTY, index, reason


def collate(batch: Sequence[tuple]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[str]]:
    """Stack JpegBytes items: (images (N, 3, H, W), list of N byte tensors, indices (N,), N reasons)."""
    images, data, indices, reasons = zip(*batch)
    return torch.stack(images), list(data), torch.tensor(indices), list(reasons)


def check_interpolation(name: str) -> InterpolationMode:
    """Return the tensor interpolation of the classifier's `name`; ConfigError if the device path has none."""
    if name not in _MODES:
        raise ConfigError(f"--decode gpu resizes with {', '.join(_MODES)} only; the classifier's preprocessing "
                          f"uses {name!r}: use --decode cpu")
    return _MODES[name]


def decode_all(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors on `device` in one batched call; returns uint8 (3, H, W) tensors on
    `device`, None for a file the device decoder refuses (retried one by one after a failed batch)."""
    if not data:
        return []
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        decoded: list[torch.Tensor | None] = []
        for one in data:
            try:
                decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def prepare(pixels: torch.Tensor, bbox: Sequence[float] | None, margin: float, input_size: tuple[int, int],
            mode: InterpolationMode, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Return the model input (3, H, W) float32, on `pixels`' device, of a decoded uint8 image (3, h, w):
    the crop `pixel_box(bbox, (w, h), margin)` (None: the whole image), resized to cover `input_size`
    = (H, W) keeping its aspect ratio, centre-cropped, scaled to [0, 1] and normalised by `mean`, `std`."""
    height, width = pixels.shape[-2:]
    if bbox is not None:
        x0, y0, x1, y1 = pixel_box(tuple(bbox), (width, height), margin)
        pixels = pixels[:, y0:y1, x0:x1]
    new_size = cover_size(pixels.shape[-1], pixels.shape[-2], input_size)
    pixels = F.resize(pixels, list(new_size), interpolation=mode, antialias=True)
    pixels = F.center_crop(pixels, list(input_size))
    return F.normalize(pixels.float().div_(255), list(mean), list(std))


def device_batches(cpu: DetectionImages, positions: Sequence[int], batch_size: int, workers: int,
                   device: torch.device, spec: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Yield the batches of `cpu`'s items at `positions`, in order, as the CPU path's loader does:
    (images (N, 3, H, W) float32 on `device`, item indices (N,), failure reasons ("" if decoded)).
    `spec` is the classifier's input spec (mean, std, interpolation)."""
    mode = check_interpolation(spec["interpolation"])
    loader = make_loader(Subset(JpegBytes(cpu), list(positions)), batch_size, None, workers, device, collate)
    for images, data, indices, reasons in loader:
        images = images.to(device, non_blocking=True)
        todo = [j for j, one in enumerate(data) if one.numel()]
        for j, pixels in zip(todo, decode_all([data[j] for j in todo], device)):
            index = int(indices[j])
            if pixels is None:  # the device decoder refused it: the CPU path, here
                image, _, reasons[j] = cpu[index]
                images[j] = image.to(device)
                continue
            images[j] = prepare(pixels, cpu.items[index].bbox, cpu.margin, cpu.input_size, mode,
                                spec["mean"], spec["std"])
        yield images, indices, reasons
