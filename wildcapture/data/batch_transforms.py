"""Train-time augmentation and normalisation of whole batches: uint8 B x 3 x H x W -> float B x 3 x h x w.

The batched twin of `transforms.build_transforms` for images already decoded into memory (stage 1's image
cache, `wildcapture.classifier.image_cache`): a few tensor operations per batch instead of PIL calls per image.
Every random draw comes from a `torch.Generator` the caller passes (stage 1 reseeds it every epoch), on the CPU,
so a batch depends on (that generator's state, the batch) only, whatever the device.

* `normalise`: exactly `ToTensor` + `Normalize` (the same float operations in the same order: bit-identical).
* `random_resized_boxes`: torchvision's `RandomResizedCrop.get_params` rule, one box per image: 10 tries of an
  area fraction in [min_scale, 1] and a log-uniform aspect ratio in [3/4, 4/3], the first box that fits,
  else the centre crop of the clamped ratio.
* `crop_resize`: each image's box resampled to h x w in one `grid_sample` (the pixel-centre mapping of
  `F.interpolate(align_corners=False)` on the box; bilinear, bicubic or nearest). It does not antialias: meant
  for boxes no larger than h x w (upsampling), the case of small images such as CIFAR's.
* `color_jitter`: brightness, contrast and saturation factors drawn in [max(0, 1 - s), 1 + s], applied in a
  random order per image, as torchvision's tensor ColorJitter computes them (on floats: no uint8 rounding).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

GRID_SAMPLE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}
_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_TRIES = 10
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or float in [0, 255]) B x 3 x H x W -> float32 (x / 255 - mean) / std, bit-identical to
    `T.ToTensor()` then `T.Normalize(mean, std)` on each image."""
    x = images.to(torch.float32, copy=True).div_(255)
    return normalise_unit_(x, mean, std)


def normalise_unit_(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float B x 3 x H x W in [0, 1] -> (x - mean) / std, in place (as `T.Normalize` computes it)."""
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(list(mean), dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(list(std), dtype=x.dtype, device=x.device).view(shape)
    return x.sub_(mean_t).div_(std_t)


def random_resized_boxes(count: int, height: int, width: int, min_scale: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Return `count` crop boxes of an height x width image as an int64 tensor count x 4 of (top, left, box
    height, box width), drawn as torchvision's `RandomResizedCrop.get_params(scale=(min_scale, 1), ratio=(3/4,
    4/3))` draws one (same rule; other random numbers). Every box lies inside the image and is at least 1 x 1."""
    area = float(height * width)
    target = area * (min_scale + (1.0 - min_scale) * torch.rand(count, _TRIES, generator=generator, dtype=torch.float64))
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(count, _TRIES, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits (0 where none does)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    # no try fits: the whole image, its ratio clamped to [3/4, 4/3], centred (torchvision's fallback)
    in_ratio = width / height
    if in_ratio < _RATIO[0]:
        fall_w, fall_h = width, int(round(width / _RATIO[0]))
    elif in_ratio > _RATIO[1]:
        fall_h, fall_w = height, int(round(height * _RATIO[1]))
    else:
        fall_w, fall_h = width, height
    none_fit = ~fits.any(dim=1)
    h = torch.where(none_fit, torch.full_like(h, fall_h), h)
    w = torch.where(none_fit, torch.full_like(w, fall_w), w)
    u_top, u_left = torch.rand(2, count, generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1)).long().clamp(max=height - h)
    left = torch.floor(u_left * (width - w + 1)).long().clamp(max=width - w)
    top = torch.where(none_fit, (height - h) // 2, top)
    left = torch.where(none_fit, (width - w) // 2, left)
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resample box i = (top, left, height, width) (pixels, may be fractional) of float image i (B x C x H x W)
    to `size` = (h, w): output pixel (v, u) samples source point (left + (u + 0.5) * width / w - 0.5, top +
    (v + 0.5) * height / h - 0.5), as `F.interpolate(box, size, align_corners=False)` places it; neighbours
    outside the box are the image's own, edges are clamped. `mode`: a key of GRID_SAMPLE_MODES. No antialiasing."""
    count, channels, height, width = images.shape
    out_h, out_w = int(size[0]), int(size[1])
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    theta = torch.zeros(count, 2, 3, dtype=torch.float32, device=images.device)
    theta[:, 0, 0] = box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [count, channels, out_h, out_w], align_corners=False)
    return F.grid_sample(images, grid, mode=GRID_SAMPLE_MODES[mode], padding_mode="border", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Jitter brightness, contrast and saturation of float images in [0, 1] (B x 3 x H x W) by factors drawn in
    [max(0, 1 - strength), 1 + strength], per image, in a random order per image (torchvision's ColorJitter(s, s,
    s) on tensors, each image its own draws)."""
    count = x.shape[0]
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    factors = (low + (high - low) * torch.rand(count, 3, generator=generator)).view(count, 3, 1, 1, 1)
    order = torch.rand(count, 3, generator=generator).argsort(dim=1)  # a random permutation per image
    x = x.clone()
    for step in range(3):
        for op, adjust in enumerate(_ADJUSTMENTS):  # each image once per step: the images whose step-th op is op
            rows = (order[:, step] == op).nonzero().squeeze(1)
            if len(rows):
                on_device = rows.to(x.device)
                x[on_device] = adjust(x[on_device], factors[rows, op].to(x.device))
    return x


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp_(0.0, 1.0)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x), factor)


_ADJUSTMENTS = (_brightness, _contrast, _saturation)


class BatchAugment:
    """uint8 B x 3 x H x W batch -> normalised float B x 3 x h x w, augmented as `build_transforms`' train half
    asks (`data.augment`), on the batch's device with random draws from the caller's CPU generator.

    `crop_min_scale`: None (the batch is already h x w: the eval geometry was applied when the images were
    cached) or RandomResizedCrop's smallest scale (the batch holds the images at their own size); `hflip`: the
    flip probability; `jitter`: ColorJitter's strength (0: none).
    """

    def __init__(self, size: Sequence[int], mean: Sequence[float], std: Sequence[float], *, hflip: float = 0.0,
                 crop_min_scale: float | None = None, jitter: float = 0.0, interpolation: str = "bilinear"):
        if crop_min_scale is not None and interpolation not in GRID_SAMPLE_MODES:
            raise ValueError(f"interpolation {interpolation!r} has no batched crop; one of {sorted(GRID_SAMPLE_MODES)}")
        self.size = (int(size[0]), int(size[1]))
        self.mean, self.std = list(mean), list(std)
        self.hflip, self.crop_min_scale, self.jitter = float(hflip), crop_min_scale, float(jitter)
        self.interpolation = interpolation

    @property
    def random(self) -> bool:
        """Whether any random draw is made (else the result is the eval transform's)."""
        return self.hflip > 0 or self.crop_min_scale is not None or self.jitter > 0

    def describe(self) -> str:
        parts = []
        if self.crop_min_scale is not None:
            parts.append(f"random resized crop (min scale {self.crop_min_scale}, {self.interpolation}) to "
                         f"{self.size[1]}x{self.size[0]}")
        if self.hflip > 0:
            parts.append(f"hflip {self.hflip}")
        if self.jitter > 0:
            parts.append(f"color jitter {self.jitter}")
        return ", ".join(parts + ["normalise"])

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.random:
            return normalise(images, self.mean, self.std)
        count, _, height, width = images.shape
        x = images.to(torch.float32, copy=True).div_(255)
        if self.crop_min_scale is not None:
            boxes = random_resized_boxes(count, height, width, self.crop_min_scale, generator)
            x = crop_resize(x, boxes, self.size, self.interpolation).clamp_(0.0, 1.0)
        if self.hflip > 0:
            flip = (torch.rand(count, generator=generator) < self.hflip).nonzero().squeeze(1).to(x.device)
            x[flip] = x[flip].flip(-1)
        if self.jitter > 0:
            x = color_jitter(x, self.jitter, generator)
        return normalise_unit_(x, self.mean, self.std)
