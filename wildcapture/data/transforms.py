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

from .config import resolve_augment
from .errors import DatasetError

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                   "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS,
                   "box": InterpolationMode.BOX, "hamming": InterpolationMode.HAMMING}


class ResizeToCover:
    """Scale a PIL image, keeping its aspect ratio, to the smallest size covering ``size`` = (H, W)."""

    def __init__(self, size: tuple[int, int], interpolation: InterpolationMode):
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        scale = max(height / image.height, width / image.width)
        # int() truncation as torchvision's Resize(int) does; max() keeps full cover despite rounding
        new = (max(height, int(image.height * scale)), max(width, int(image.width * scale)))
        return TF.resize(image, list(new), interpolation=self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"ResizeToCover(size={self.size}, interpolation={self.interpolation.value})"


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
    if interpolation not in _INTERPOLATIONS:
        raise DatasetError(f"unknown interpolation {interpolation!r}; valid: {sorted(_INTERPOLATIONS)}")
    mode = _INTERPOLATIONS[interpolation]
    size = (int(input_size[0]), int(input_size[1]))
    augment = resolve_augment((data_cfg or {}).get("augment"))
    finish = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    cover = T.Resize(size[0], interpolation=mode, antialias=True) if size[0] == size[1] else ResizeToCover(size, mode)
    resize = [cover, T.CenterCrop(size)]

    train: list[Callable] = []
    if augment["random_resized_crop"] is not None:
        train.append(T.RandomResizedCrop(size, scale=(float(augment["random_resized_crop"]), 1.0),
                                         interpolation=mode, antialias=True))
    else:
        train += resize
    if augment["hflip"] > 0:
        train.append(T.RandomHorizontalFlip(p=float(augment["hflip"])))
    if augment["color_jitter"] > 0:
        s = float(augment["color_jitter"])
        train.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
    return T.Compose(train + finish), T.Compose(resize + finish)
