"""Stage 1's image cache and batched augmentation, each against an independent computation: the eval path against
the per-image PIL transform, flips where the seeded mask says, crop boxes and their resampling, colour jitter
against torchvision's, the cache's round trip, and seeded runs equal to themselves."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

import wildcapture.stages.train_classifier as stage1
from wildcapture.classifier.image_cache import (CachedBatches, CachePlan, NotCached, batch_augment, decode_split,
                                                plan_cache)
from wildcapture.classifier.sampler import EpochSampler
from wildcapture.data.batch_transforms import (BatchAugment, color_jitter, crop_resize, normalise,
                                               random_resized_boxes)
from wildcapture.data.images import ArrayImages, FileImages
from wildcapture.data.splits import ImageSplit
from wildcapture.data.transforms import build_transforms, eval_transform
from wildcapture.errors import ConfigError, DatasetError
from wildcapture.storage import load_checkpoint

from stage_helpers import stage1_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _spec(size=(16, 16), interpolation="bicubic"):
    return {"input_size": list(size), "mean": list(MEAN), "std": list(STD), "interpolation": interpolation}


def _array_split(count=10, size=(8, 8), seed=0) -> ImageSplit:
    pixels = np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8)
    return ImageSplit([f"a/{i}" for i in range(count)], np.arange(count) % 3, ["x"] * count, ArrayImages({"a": pixels}))


def _file_split(tmp_path, sizes) -> ImageSplit:
    rng = np.random.default_rng(1)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return ImageSplit(paths, np.zeros(len(paths), dtype=np.int64), ["x"] * len(paths), FileImages())


def _batches(split, plan, spec, data_cfg=None, augmented=False, batch_size=4, shuffle=False):
    images = decode_split(split, plan, spec["interpolation"], progress=False)
    sampler = EpochSampler(split.labels, shuffle=shuffle, seed=3)
    return CachedBatches(images, split.labels, batch_size, sampler, batch_augment(plan, data_cfg or {}, spec, augmented),
                         torch.device("cpu"), plan)


@pytest.mark.parametrize("size, interpolation", [((16, 16), "bicubic"), ((12, 16), "bilinear"), ((8, 8), "bicubic")])
def test_the_cached_eval_path_equals_the_per_image_pil_transform(tmp_path, size, interpolation):
    split = _file_split(tmp_path, [(8, 8), (20, 13), (9, 31), (32, 32), (5, 7)])  # any sizes: resized once
    spec = _spec(size, interpolation)
    plans, _ = plan_cache({"val_id": split}, (), {}, spec, {"cache_images": True, "cache_mb": 1})
    assert plans["val_id"].geometry == "input"
    cached = torch.cat([images for images, _ in _batches(split, plans["val_id"], spec, batch_size=2)])
    per_image = torch.stack([eval_transform(size, MEAN, STD, interpolation)(split.load_image(i))
                             for i in range(len(split))])
    assert torch.equal(cached, per_image)  # bit-identical: stage 2 sees what stage 1 validated on


def test_an_unaugmented_train_batch_equals_the_train_transform_and_a_flip_falls_where_the_mask_says():
    split, spec = _array_split(9), _spec()
    plan = CachePlan("train_id", "input", (16, 16), len(split))
    train_tf, _ = build_transforms({}, spec["input_size"], MEAN, STD, "bicubic")
    plain = next(iter(_batches(split, plan, spec, {}, augmented=True, batch_size=9)))[0]
    assert torch.equal(plain, torch.stack([train_tf(split.load_image(i)) for i in range(9)]))

    flips = _batches(split, plan, spec, {"augment": {"hflip": 0.5}}, augmented=True, batch_size=9)
    flips.generator.manual_seed(7)
    mask = torch.rand(9, generator=torch.Generator().manual_seed(7)) < 0.5  # the draw BatchAugment makes
    flipped = next(iter(flips))[0]
    assert 0 < mask.sum() < 9
    for i in range(9):
        assert torch.equal(flipped[i], plain[i].flip(-1) if mask[i] else plain[i])


@pytest.mark.parametrize("height, width, min_scale", [(32, 32, 0.08), (8, 8, 0.5), (5, 40, 0.9), (40, 6, 0.3),
                                                      (1, 1, 0.5)])
def test_random_resized_boxes_lie_inside_the_image_and_follow_the_rule(height, width, min_scale):
    boxes = random_resized_boxes(500, height, width, min_scale, torch.Generator().manual_seed(0))
    top, left, box_h, box_w = boxes.T
    assert boxes.dtype == torch.int64
    assert (top >= 0).all() and (left >= 0).all() and (box_h >= 1).all() and (box_w >= 1).all()
    assert (top + box_h <= height).all() and (left + box_w <= width).all()
    # a box from a try: area fraction in [min_scale, 1] and ratio in [3/4, 4/3], up to rounding to whole pixels
    area, ratio = (box_h * box_w).double() / (height * width), box_w.double() / box_h
    slack_area = ((box_h + 1) * (box_w + 1)).double() / (box_h * box_w)
    slack_ratio = (box_w + 0.5) / (box_w - 0.5).clamp(min=0.5) * (box_h + 0.5) / (box_h - 0.5).clamp(min=0.5)
    from_try = (area * slack_area >= min_scale) & (ratio <= 4 / 3 * slack_ratio) & (ratio >= 3 / 4 / slack_ratio)
    centred = (top == (height - box_h) // 2) & (left == (width - box_w) // 2)
    assert (from_try | centred).all()
    again = random_resized_boxes(500, height, width, min_scale, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_crop_resize_samples_each_box_as_interpolate_would():
    images = torch.rand(3, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0, 0, 10, 12], [2, 3, 4, 5], [6, 7, 4, 5]])
    # a whole-image box at the same size: the image itself
    assert torch.allclose(crop_resize(images[:1], boxes[:1], (10, 12), "bilinear"), images[:1], atol=1e-5)
    # nearest, twice the box's size: each pixel of the box repeated 2 x 2
    out = crop_resize(images, boxes, (8, 10), "nearest")
    for i in (1, 2):
        top, left, h, w = boxes[i].tolist()
        crop = images[i, :, top:top + h, left:left + w]
        assert torch.equal(out[i], crop.repeat_interleave(2, -2).repeat_interleave(2, -1))
    # bilinear inside the box (away from its edge, where the neighbours outside the box are the image's own)
    out = crop_resize(images, boxes, (8, 10), "bilinear")
    top, left, h, w = boxes[1].tolist()
    reference = F.interpolate(images[1:2, :, top:top + h, left:left + w], size=(8, 10), mode="bilinear",
                              align_corners=False)
    assert torch.allclose(out[1, :, 1:-1, 1:-1], reference[0, :, 1:-1, 1:-1], atol=1e-5)


def test_color_jitter_matches_torchvision_per_image_with_the_same_factors_and_order():
    x = torch.rand(6, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    out = color_jitter(x, 0.4, torch.Generator().manual_seed(2))
    replay = torch.Generator().manual_seed(2)
    factors = 0.6 + 0.8 * torch.rand(6, 3, generator=replay)
    order = torch.rand(6, 3, generator=replay).argsort(dim=1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(6):
        image = x[i]
        for op in order[i].tolist():
            image = ops[op](image, float(factors[i, op]))
        assert torch.allclose(out[i], image, atol=1e-5), i
    assert torch.equal(color_jitter(x, 0.0, torch.Generator()), x)


def test_the_cache_round_trip_and_a_bad_image(tmp_path):
    split = _array_split(600, (6, 7))  # more than one decoding chunk
    plan = CachePlan("train_id", "native", (6, 7), len(split))
    images = decode_split(split, plan, "bicubic", progress=False)
    assert images.shape == (600, 3, 6, 7) and images.dtype == torch.uint8
    for i in (0, 255, 256, 599):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), np.asarray(split.load_image(i)))

    mixed = _file_split(tmp_path, [(6, 6), (6, 6), (7, 6)])
    with pytest.raises(NotCached, match=r"2.png is 7x6, not 6x6"):
        decode_split(mixed, CachePlan("train_id", "native", (6, 6), 3), "bicubic", progress=False)
    (tmp_path / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="1.png"):
        decode_split(mixed, CachePlan("val_id", "input", (8, 8), 3), "bicubic", progress=False)


def test_plans_follow_the_setting_the_budget_and_the_crop():
    splits = {"train_id": _array_split(100, (8, 8)), "val_id": _array_split(20, (8, 8))}
    crop = {"augment": {"random_resized_crop": 0.5}}
    plans, reasons = plan_cache(splits, ("train_id",), crop, _spec(), {"cache_images": None, "cache_mb": 1})
    assert (plans["train_id"].geometry, plans["train_id"].size, plans["val_id"].geometry) == ("native", (8, 8), "input")
    assert reasons == {}
    budget = (100 * 3 * 64 + 20 * 3 * 256 - 1) / (1 << 20)  # one byte short for val_id after train_id
    plans, reasons = plan_cache(splits, ("train_id",), crop, _spec(), {"cache_images": "auto", "cache_mb": budget})
    assert list(plans) == ["train_id"] and "over the" in reasons["val_id"]
    with pytest.raises(ConfigError, match="train.cache_images=true, but val_id cannot be cached"):
        plan_cache(splits, ("train_id",), crop, _spec(), {"cache_images": True, "cache_mb": budget})
    plans, reasons = plan_cache(splits, ("train_id",), crop, _spec((4, 4)), {"cache_images": None, "cache_mb": 1})
    assert "larger than the 4x4 input" in reasons["train_id"] and list(plans) == ["val_id"]
    assert plan_cache(splits, ("train_id",), {}, _spec(), {"cache_images": False, "cache_mb": 1})[0] == {}
    with pytest.raises(ConfigError, match="train.cache_images must be"):
        plan_cache(splits, (), {}, _spec(), {"cache_images": "yes", "cache_mb": 1})


def test_an_augmented_epoch_repeats_itself_from_its_seed():
    split, spec = _array_split(20, (8, 8)), _spec()
    augment = {"augment": {"random_resized_crop": 0.3, "hflip": 0.5, "color_jitter": 0.3}}
    loader = _batches(split, CachePlan("train_id", "native", (8, 8), 20), spec, augment, augmented=True, shuffle=True)

    def epoch(seed):
        loader.sampler.set_epoch(seed)
        loader.generator.manual_seed(seed)
        return [(images.clone(), labels) for images, labels in loader]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    assert first[0][0].shape == (4, 3, 16, 16) and len(first) == len(loader) == 5


def test_stage_1_trains_the_same_weights_with_or_without_the_cache_when_nothing_is_random(tmp_path, capsys):
    for name, setting in (("cached", "auto"), ("per_image", "false")):
        stage1.run(stage1_config(tmp_path / name, "train.epochs=2", f"train.cache_images={setting}"))
    printed = capsys.readouterr().out
    assert "stage 1 data (train.cache_images=auto, train.cache_mb=2048): train_id: 40 images decoded once" in printed
    assert "stage 1 data (train.cache_images=false" in printed and "loaded per image every epoch" in printed
    cached, per_image = (load_checkpoint(tmp_path / name / "last.pth")["model"] for name in ("cached", "per_image"))
    assert all(torch.equal(cached[k], per_image[k]) for k in cached)


def test_an_augmented_stage_1_run_repeats_itself(tmp_path):
    augment = ["train.epochs=2", "data.augment.random_resized_crop=0.5", "data.augment.hflip=0.5",
               "data.augment.color_jitter=0.2", "train.cache_images=true"]
    for name in ("a", "b"):
        stage1.run(stage1_config(tmp_path / name, *augment))
    a, b = (load_checkpoint(tmp_path / name / "last.pth")["model"] for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_epoch_benchmark_reports_the_epoch_the_compute_and_the_path(capsys):
    import importlib.util

    from wildcapture.paths import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bench_train_epoch", REPO_ROOT / "benchmarks" / "bench_train_epoch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ["model.img_size=8", "model.patch_size=2", "model.embed_dim=16", "model.depth=2", "model.num_heads=2",
            "data.limit_per_split=40", "train.batch_size=8", "device=cpu"]
    result = bench.main(["--benchmark", "digits", *tiny, "--batches", "3", "--repeats", "1", "--json"])
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])  # the JSON alone on stdout
    assert printed == result and result["images"] == 24 and result["batches"] == 3
    assert result["ratio"] == pytest.approx(result["epoch_s"] / result["compute_s"], rel=1e-2)
    assert result["data_path"].startswith("40 images decoded once") and result["machine"].startswith("machine: ")
