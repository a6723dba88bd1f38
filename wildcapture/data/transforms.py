"""Train/eval image transforms: PIL RGB image -> normalised float tensor 3 x H x W.

Eval resizes like the paper's test-time preprocessing, Resize(224) + CenterCrop(224): the image is
scaled (keeping its aspect ratio) so it just covers H x W, then the centre H x W is cropped. For
square inputs this is exactly torchvision's Resize(H) + CenterCrop(H); for non-square sources
the edges of the long side are cut off.
"""
from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from wildcapture.errors import DatasetError


_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                   "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS,
                   "box": InterpolationMode.BOX, "hamming": InterpolationMode.HAMMING}


def cover_size(width: int, height: int, input_size: Sequence[int]) -> tuple[int, int]:
    """Return (new_height, new_width) in pixels that the eval resize gives a width x height image for a
    model input of ``input_size`` = (H, W): the aspect ratio kept, just covering H x W.

    For H == W this is torchvision's Resize(H) (short side -> H, long side truncated to an int).
    """
    size_h, size_w = int(input_size[0]), int(input_size[1])
    if size_h == size_w:
        if width <= height:
            return int(size_w * height / width), size_w
        return size_h, int(size_h * width / height)
    scale = max(size_h / height, size_w / width)
    # int() truncation as torchvision's Resize(int) does; max() keeps full cover despite rounding
    return max(size_h, int(height * scale)), max(size_w, int(width * scale))


def centre_crop_box(width: int, height: int, input_size: Sequence[int]) -> tuple[float, float, float, float]:
    """Return the part of a width x height image that the eval transform keeps for a model input of
    ``input_size`` = (H, W), as (x0, y0, x1, y1) in the original image's pixel-edge coordinates
    (pixel column i spans i..i+1; the box is x0 <= x < x1, y0 <= y < y1; floats, since the resize
    rarely maps the crop to whole original pixels).

    The crop offsets are torchvision CenterCrop's, ``int(round((resized - crop) / 2))``.
    """
    new_h, new_w = cover_size(width, height, input_size)
    size_h, size_w = int(input_size[0]), int(input_size[1])
    top, left = int(round((new_h - size_h) / 2.0)), int(round((new_w - size_w) / 2.0))
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + size_w) * sx, (top + size_h) * sy


class ResizeToCover:
    """Scale a PIL image, keeping its aspect ratio, to the smallest size covering ``size`` = (H, W)."""

    def __init__(self, size: tuple[int, int], interpolation: InterpolationMode):
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        new = cover_size(image.width, image.height, self.size)
        return TF.resize(image, list(new), interpolation=self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"ResizeToCover(size={self.size}, interpolation={self.interpolation.value})"


def _mode(interpolation: str) -> InterpolationMode:
    if interpolation not in _INTERPOLATIONS:
        raise DatasetError(f"unknown interpolation {interpolation!r}; valid: {sorted(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[interpolation]


def _eval_steps(size: tuple[int, int], mode: InterpolationMode) -> list[Callable]:
    """Resize (short side; `ResizeToCover` for a non-square size) and centre crop to `size` (H, W)."""
    cover = T.Resize(size[0], interpolation=mode, antialias=True) if size[0] == size[1] else ResizeToCover(size, mode)
    return [cover, T.CenterCrop(size)]


def eval_resize(input_size: Sequence[int], interpolation: str = "bicubic") -> Callable:
    """Return the geometric half of `eval_transform`: PIL RGB image -> PIL RGB image of `input_size` (H, W)
    (resize to cover, centre crop). `eval_transform` is this, then `ToTensor` and `Normalize`."""
    return T.Compose(_eval_steps((int(input_size[0]), int(input_size[1])), _mode(interpolation)))


def eval_transform(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic") -> Callable:
    """Return the eval transform of `build_transforms`: PIL RGB image -> float tensor 3 x H x W."""
    size = (int(input_size[0]), int(input_size[1]))
    finish = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose([*_eval_steps(size, _mode(interpolation)), *finish])


def build_transforms(data_cfg: dict, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                     interpolation: str = "bicubic") -> tuple[Callable, Callable]:
    """Return (train_transform, eval_transform), each PIL RGB image -> float tensor 3 x H x W.

    ``input_size`` is (H, W) in pixels; ``mean``/``std`` are per-channel values for images in [0, 1].
    eval: Resize(short side; `ResizeToCover` for non-square H x W) + CenterCrop, ToTensor, Normalize.
    train: the same, except that
    RandomResizedCrop(input_size, scale=(min, 1)) replaces the resize and crop when
    ``data_cfg["augment"]["random_resized_crop"]`` is set, then RandomHorizontalFlip(hflip) if
    hflip > 0 and ColorJitter(s, s, s) (brightness, contrast, saturation) if color_jitter = s > 0.
    """
    from wildcapture.data.config import resolve_augment  # the train half only: detect needs the eval one

    mode = _mode(interpolation)
    size = (int(input_size[0]), int(input_size[1]))
    augment = resolve_augment((data_cfg or {}).get("augment"))
    train: list[Callable] = []
    if augment["random_resized_crop"] is not None:
        train.append(T.RandomResizedCrop(size, scale=(float(augment["random_resized_crop"]), 1.0),
                                         interpolation=mode, antialias=True))
    else:
        train += _eval_steps(size, mode)
    if augment["hflip"] > 0:
        train.append(T.RandomHorizontalFlip(p=float(augment["hflip"])))
    if augment["color_jitter"] > 0:
        s = float(augment["color_jitter"])
        train.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
    finish = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(train + finish), eval_transform(input_size, mean, std, interpolation)
