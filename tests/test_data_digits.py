"""The offline digits benchmark: split sizes, disjointness, seeding, labels, config errors, limit."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError

SPLITS = ("train_id", "val_id", "test_id", "ood_heldout")  # the default protocol's splits


def _bench(**cfg):
    return build_splits({"name": "digits", **cfg})


def test_split_sizes_add_up_and_are_disjoint():
    bench = _bench()
    target = load_digits().target
    sizes = {k: len(v) for k, v in bench.splits.items()}
    assert sizes["train_id"] + sizes["val_id"] + sizes["test_id"] == int(np.isin(target, range(5)).sum())
    assert sizes["ood_heldout"] == int(np.isin(target, range(5, 10)).sum())
    assert sizes["test_id"] == pytest.approx(0.2 * 901, abs=1)
    assert sizes["val_id"] == pytest.approx(0.1 * (901 - sizes["test_id"]), abs=1)
    all_sources = [s for k in SPLITS for s in bench.splits[k].sources]
    assert len(all_sources) == len(set(all_sources)) == len(target)
    assert set(bench.splits["ood_heldout"].class_names) == {"5", "6", "7", "8", "9"}
    assert (bench.splits["ood_heldout"].labels == -1).all()
    for k in ("train_id", "val_id", "test_id"):  # stratified: every ID class everywhere
        assert set(bench.splits[k].labels.tolist()) == set(range(5))


def test_same_seed_same_splits_other_seed_differs():
    a, b, c = _bench(seed=3), _bench(seed=3), _bench(seed=4)
    for k in SPLITS:
        assert a.splits[k].sources == b.splits[k].sources
    assert a.splits["train_id"].sources != c.splits["train_id"].sources


def test_labels_follow_id_class_order_and_pixels():
    bench = _bench(id_classes=[7, "3"], ood_classes=[1])
    assert bench.id_class_names == ["7", "3"] and bench.ood_class_names == ["1"]
    digits = load_digits()
    split = bench.splits["train_id"]
    for i in range(len(split)):
        row = int(split.sources[i].split("/")[1])
        assert split.class_names[i] == str(digits.target[row])
        assert split.labels[i] == ["7", "3"].index(split.class_names[i])
    image = split.load_image(0)
    row = int(split.sources[0].split("/")[1])
    assert image.mode == "RGB" and image.size == (8, 8)
    expected = np.rint(digits.images[row] * 255 / 16).astype(np.uint8)
    assert (np.asarray(image)[..., 0] == expected).all() and (np.asarray(image)[..., 2] == expected).all()
    x, y = split[0]
    assert x.shape == (3, 8, 8) and y == split.labels[0]


@pytest.mark.parametrize("cfg, words", [
    ({"id_classes": [0, 1], "ood_classes": [1, 2]}, ["both"]),
    ({"id_classes": [0, 12]}, ["12", "id_classes"]),
    ({"ood_classes": ["cat"]}, ["cat", "ood_classes"]),
    ({"name": "mnist"}, ["mnist", "digits", "cifar10", "wildcapture", "imagefolder"]),
    ({"val_fraction": 1.5}, ["val_fraction"]),
    ({"colour": 1}, ["colour"]),
    ({"augment": {"flip": 0.5}}, ["flip"]),
])
def test_bad_config_raises_dataset_error(cfg, words):
    with pytest.raises(DatasetError) as err:
        _bench(**cfg)
    for word in words:
        assert word in str(err.value)


def test_limit_per_split_is_seeded_subset():
    full, a, b = _bench(), _bench(limit_per_split=20), _bench(limit_per_split=20)
    for k in SPLITS:
        assert len(a.splits[k]) == 20
        assert a.splits[k].sources == b.splits[k].sources
        assert set(a.splits[k].sources) <= set(full.splits[k].sources)


def test_manifest_lists_every_item(tmp_path):
    bench = _bench(limit_per_split=5)
    bench.write_manifest(tmp_path / "sub" / "manifest.csv")
    lines = (tmp_path / "sub" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "split,ood_set,source,label,class_name" and len(lines) == 1 + 20
    assert [line.split(",")[:2] for line in lines[1:]] == [
        *([s, ""] for s in ("train_id", "val_id", "test_id") for _ in range(5)), *[["ood_heldout", "heldout"]] * 5]
    assert lines[-1].startswith("ood_heldout,heldout,digits/") and ",-1," in lines[-1]
