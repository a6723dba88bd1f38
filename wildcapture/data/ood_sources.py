"""Where an OOD set's images come from: OOD_SOURCES, the registry of set sources (one class and one line each).

A source turns a set of `data.ood_sets` (`protocol.OODSet`) into an `ImageSplit` of OOD items (label -1).
`check_keys` validates the set's own keys (the data config's check); `build` checks that its folder, list and
every listed file exist, then makes the split without decoding an image. Every problem is one DatasetError naming the set and the missing folder, file or list entry.

- `classes`: the data set's held-out classes (what the data set's builder holds out of its ID classes).
- `imagefolder`: every image under `root` (class = the first folder below it, or the set's name).
- `imagelist`: OpenOOD's `benchmark_imglist` format, lines `path label`, paths relative to `root`
  (default `data.root`); the labels are ignored (OOD).
A set's relative paths (`root`, `list`) resolve against `data.root`; an absolute path is used as it is.
- torchvision data sets for users who can download (`root` and `download` default to `data.root` and
  `data.download`): `cifar10`, `cifar100`, `mnist`, `svhn`, `dtd` (Textures), `places365`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from wildcapture.errors import DatasetError
from wildcapture.paths import resolve_path

from .images import FileImages, list_images
from .protocol import OODSet
from .splits import ImageSplit

MAX_LISTED = 5  # missing list entries named in the error


def _ood_split(sources: list[str], class_names: list[str], loader: Any) -> ImageSplit:
    return ImageSplit(sources, np.full(len(sources), -1, dtype=np.int64), class_names, loader)


class OODSource:
    """One kind of OOD set. `options` maps each key a set of this source may have to its default (REQUIRED:
    the set must give it)."""

    REQUIRED: ClassVar[object] = object()
    options: ClassVar[dict[str, Any]] = {}

    def check_keys(self, spec: OODSet) -> None:
        """Raise DatasetError for a key this source does not take or a required key missing (no file is read)."""
        unknown = sorted(k for k, _ in spec.options if k not in self.options)
        if unknown:
            raise DatasetError(f"OOD set {spec.name!r} (source {spec.source}): unknown key(s) {unknown}; "
                               f"this source takes {sorted(self.options) or 'no other keys'}")
        missing = [k for k, v in self.options.items() if v is self.REQUIRED and spec.option(k) is None]
        if missing:
            raise DatasetError(f"OOD set {spec.name!r} (source {spec.source}) needs key(s) {missing}")

    def build(self, spec: OODSet, data_cfg: dict[str, Any], held_out: ImageSplit | None) -> ImageSplit:
        """The set's items as an OOD split (labels -1)."""
        raise NotImplementedError

    def _path(self, spec: OODSet, key: str, data_cfg: dict[str, Any]) -> Path:
        """The set's path `key`: relative to `data.root` (which is relative to the repository root), `data.root`
        itself when the set does not give it."""
        root = resolve_path(data_cfg["root"])
        value = spec.option(key)
        return root if value is None else root / Path(value).expanduser()


class HeldOutClasses(OODSource):
    """The data set's held-out classes (`data.ood_classes`, or every class not ID)."""

    def build(self, spec: OODSet, data_cfg: dict[str, Any], held_out: ImageSplit | None) -> ImageSplit:
        if held_out is None or len(held_out) == 0:
            raise DatasetError(f"OOD set {spec.name!r} (source classes): data set {data_cfg['name']!r} holds no "
                               "classes out; name fewer data.id_classes or remove the set")
        return held_out


class ImageFolderSet(OODSource):
    """Every image under a folder."""

    options = {"root": OODSource.REQUIRED}

    def build(self, spec: OODSet, data_cfg: dict[str, Any], held_out: ImageSplit | None) -> ImageSplit:
        folder = self._path(spec, "root", data_cfg)
        if not folder.is_dir():
            raise DatasetError(f"OOD set {spec.name!r}: folder not found: {folder} (its root)")
        paths = list_images(folder)
        if not paths:
            raise DatasetError(f"OOD set {spec.name!r}: no .jpg/.jpeg/.png image under {folder}")
        names = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else spec.name
                 for p in paths]
        return _ood_split([str(p) for p in paths], names, FileImages())


class ImageListSet(OODSource):
    """OpenOOD's image list: one `path label` line per image, `path` relative to `root`."""

    options = {"list": OODSource.REQUIRED, "root": None}

    def _entries(self, spec: OODSet, data_cfg: dict[str, Any]) -> list[Path]:
        listing = self._path(spec, "list", data_cfg)
        if not listing.is_file():
            raise DatasetError(f"OOD set {spec.name!r}: image list not found: {listing} (its list)")
        root = self._path(spec, "root", data_cfg)
        lines = [line.split() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        paths = [root / parts[0] for parts in lines]
        if not paths:
            raise DatasetError(f"OOD set {spec.name!r}: image list {listing} is empty")
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise DatasetError(f"OOD set {spec.name!r}: {len(absent)} of the {len(paths)} images in {listing} do not "
                               f"exist under {root}, e.g. {absent[:MAX_LISTED]}; set its root to the folder the "
                               "list's paths start from")
        return paths

    def build(self, spec: OODSet, data_cfg: dict[str, Any], held_out: ImageSplit | None) -> ImageSplit:
        paths = self._entries(spec, data_cfg)
        return _ood_split([str(p) for p in paths], [spec.name] * len(paths), FileImages())


class TorchvisionImages:
    """Loader of sources `"<set>/<i>"`: item i of a torchvision data set, as an RGB PIL image."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, source: str) -> Image.Image:
        return self.dataset[int(source.rpartition("/")[2])][0].convert("RGB")


class TorchvisionSet(OODSource):
    """A torchvision data set's test part (`dataset` names the class in `torchvision.datasets`)."""

    options = {"root": None, "download": None}

    def __init__(self, dataset: str, part: dict[str, Any]) -> None:
        self.dataset, self.part = dataset, part

    def build(self, spec: OODSet, data_cfg: dict[str, Any], held_out: ImageSplit | None) -> ImageSplit:
        import torchvision.datasets

        root = self._path(spec, "root", data_cfg)
        download = spec.option("download")
        download = data_cfg["download"] if download is None else bool(download)
        try:
            dataset = getattr(torchvision.datasets, self.dataset)(root=str(root), download=download, **self.part)
        except (RuntimeError, OSError) as exc:
            hint = "check the network" if download else "set data.download=true (or download: true on the set)"
            raise DatasetError(f"OOD set {spec.name!r}: torchvision {self.dataset} not found in {root} ({exc}); "
                               f"{hint}, or set the set's root") from exc
        n = len(dataset)
        classes, targets = getattr(dataset, "classes", None), getattr(dataset, "targets", None)
        names = ([str(classes[int(t)]) for t in targets] if classes is not None and targets is not None
                 else [spec.name] * n)
        return _ood_split([f"{spec.name}/{i}" for i in range(n)], names, TorchvisionImages(dataset))


OOD_SOURCES: dict[str, OODSource] = {
    "classes": HeldOutClasses(),
    "imagefolder": ImageFolderSet(),
    "imagelist": ImageListSet(),
    "cifar10": TorchvisionSet("CIFAR10", {"train": False}),
    "cifar100": TorchvisionSet("CIFAR100", {"train": False}),
    "mnist": TorchvisionSet("MNIST", {"train": False}),
    "svhn": TorchvisionSet("SVHN", {"split": "test"}),
    "dtd": TorchvisionSet("DTD", {"split": "test"}),
    "places365": TorchvisionSet("Places365", {"split": "val", "small": True}),
}


def source_of(spec: OODSet) -> OODSource:
    """The registered source of `spec`, its keys checked; DatasetError naming the valid sources."""
    if spec.source not in OOD_SOURCES:
        raise DatasetError(f"OOD set {spec.name!r}: unknown source {spec.source!r}; valid sources: "
                           f"{', '.join(OOD_SOURCES)}")
    source = OOD_SOURCES[spec.source]
    source.check_keys(spec)
    return source
