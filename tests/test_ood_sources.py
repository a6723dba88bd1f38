"""Where OOD sets come from (`wildcapture.data.ood_sources`): folders, OpenOOD image lists, torchvision data sets;
each problem one DatasetError naming the set and the missing folder, list or file."""
import struct

import numpy as np
import pytest
from PIL import Image

from wildcapture.data.build import build_splits
from wildcapture.data.ood_sources import MAX_LISTED, OOD_SOURCES, source_of
from wildcapture.data.protocol import OODSet
from wildcapture.errors import DatasetError


def _png(path, seed, size=(6, 5)):
    """Write a small random RGB PNG at `path`; return its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _digits(root, *sets):
    """digits (which reads nothing from data.root) with `sets` as its OOD sets, `root` as data.root."""
    return build_splits({"name": "digits", "root": str(root), "ood_sets": list(sets)})


def test_imagefolder_set_takes_every_image_below_its_root_class_from_the_first_folder(tmp_path):
    files = {"textures/banded/0.png": 1, "textures/banded/more/1.PNG": 2, "textures/dotted/2.png": 3,
             "textures/loose.png": 4}
    pixels = {name: _png(tmp_path / name, seed) for name, seed in files.items()}
    (tmp_path / "textures" / "notes.txt").write_text("not an image")
    bench = _digits(tmp_path, {"name": "heldout", "group": "near", "source": "classes"},
                    {"name": "tex", "group": "far", "source": "imagefolder", "root": "textures"})  # relative: data.root
    split = bench.splits["ood_tex"]
    assert bench.protocol.splits[-2:] == ("ood_heldout", "ood_tex")
    assert split.sources == [str(tmp_path / name) for name in sorted(files)]
    assert split.class_names == ["banded", "banded", "dotted", "tex"]  # a file right under the root: the set's name
    assert (split.labels == -1).all() and split.labels.dtype == np.int64
    for i, name in enumerate(sorted(files)):
        assert (np.asarray(split.load_image(i)) == pixels[name]).all()
    # an absolute root is used as it is, whatever data.root is
    again = _digits(tmp_path / "elsewhere", {"name": "tex", "group": "far", "source": "imagefolder",
                                              "root": str(tmp_path / "textures")})
    assert again.splits["ood_tex"].sources == split.sources and again.protocol.ood_splits == ("ood_tex",)
    assert "ood_heldout" not in again.splits  # the declared list is the protocol


def test_imagelist_set_reads_openood_lines_relative_to_data_root(tmp_path):
    for i in range(4):
        _png(tmp_path / "images_classic" / "tin" / f"{i}.png", i)
    listing = tmp_path / "benchmark_imglist" / "cifar10" / "test_tin.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("images_classic/tin/2.png 0\nimages_classic/tin/0.png 0\n\n  images_classic/tin/3.png -1\n")
    bench = _digits(tmp_path, {"name": "tin", "group": "near", "source": "imagelist",
                               "list": "benchmark_imglist/cifar10/test_tin.txt"})
    split = bench.splits["ood_tin"]
    assert split.sources == [str(tmp_path / "images_classic" / "tin" / f"{i}.png") for i in (2, 0, 3)]  # list order
    assert (split.labels == -1).all() and split.class_names == ["tin"] * 3  # the list's labels are ignored
    assert (np.asarray(split.load_image(1)) == np.asarray(Image.open(split.sources[1]))).all()
    # `root`: the folder the list's paths start from (relative to data.root)
    (tmp_path / "short.txt").write_text("tin/1.png 0\n")
    again = _digits(tmp_path, {"name": "tin", "group": "near", "source": "imagelist", "list": "short.txt",
                               "root": "images_classic"})
    assert again.splits["ood_tin"].sources == [str(tmp_path / "images_classic" / "tin" / "1.png")]


def test_a_list_with_missing_images_is_one_error_naming_them_and_the_count(tmp_path):
    _png(tmp_path / "imgs" / "a.png", 0)
    (tmp_path / "list.txt").write_text("imgs/a.png 0\nimgs/gone.png 0\nimgs/a.png 0\n")
    with pytest.raises(DatasetError) as err:
        _digits(tmp_path, {"name": "ssb", "group": "near", "source": "imagelist", "list": "list.txt"})
    message = str(err.value)
    assert message.startswith("OOD set 'ssb': 1 of the 3 images in ") and str(tmp_path / "list.txt") in message
    assert str(tmp_path / "imgs" / "gone.png") in message and "set its root" in message
    # many missing: the count, and the first MAX_LISTED named
    (tmp_path / "long.txt").write_text("".join(f"imgs/missing{i}.png 0\n" for i in range(9)))
    with pytest.raises(DatasetError) as err:
        _digits(tmp_path, {"name": "ssb", "group": "near", "source": "imagelist", "list": "long.txt"})
    message = str(err.value)
    assert "9 of the 9 images" in message
    named = [i for i in range(9) if f"missing{i}.png" in message]
    assert named == list(range(MAX_LISTED))


@pytest.mark.parametrize("spec, setup, words", [
    ({"source": "imagelist", "list": "lists/test_x.txt"}, None, ["image list not found:", "lists/test_x.txt"]),
    ({"source": "imagelist", "list": "empty.txt"}, "empty.txt", ["image list", "empty.txt", "is empty"]),
    ({"source": "imagefolder", "root": "nowhere/ood"}, None, ["folder not found:", "nowhere/ood"]),
    ({"source": "imagefolder", "root": "bare"}, "bare/", ["no .jpg/.jpeg/.png image under", "bare"]),
])
def test_a_missing_list_or_folder_is_one_error_naming_it(tmp_path, spec, setup, words):
    if setup and setup.endswith("/"):
        (tmp_path / setup).mkdir()
        (tmp_path / setup / "readme.txt").write_text("no images here")
    elif setup:
        (tmp_path / setup).write_text("\n\n")
    with pytest.raises(DatasetError) as err:
        _digits(tmp_path, {"name": "x", "group": "far", **spec})
    message = str(err.value)
    assert message.startswith("OOD set 'x': ") and str(tmp_path) in message
    for word in words:
        assert word in message


def test_unknown_source_or_key_names_the_set_and_what_is_valid():
    with pytest.raises(DatasetError, match=r"OOD set 'x': unknown source 'imagelst'; valid sources: classes, "
                                           r"imagefolder, imagelist, cifar10"):
        source_of(OODSet("x", "near", "imagelst"))
    with pytest.raises(DatasetError, match=r"OOD set 'x' \(source imagefolder\): unknown key\(s\) \['rot'\]; this "
                                           r"source takes \['root'\]"):
        source_of(OODSet("x", "near", "imagefolder", (("rot", "a"),)))
    with pytest.raises(DatasetError, match=r"unknown key\(s\) \['list'\]; this source takes no other keys"):
        source_of(OODSet("x", "near", "classes", (("list", "a.txt"),)))
    assert source_of(OODSet("x", "near", "svhn", (("download", False), ("root", "svhn")))) is OOD_SOURCES["svhn"]


def test_a_classes_set_needs_held_out_classes():
    with pytest.raises(DatasetError, match="OOD set 'open' \\(source classes\\): data set 'cifar10' holds no "
                                           "classes out; name fewer data.id_classes"):
        OOD_SOURCES["classes"].build(OODSet("open", "near", "classes"), {"name": "cifar10"}, None)


def _idx(path, magic, array):
    """Write `array` (uint8) in the idx format of MNIST's raw files: a big-endian magic and dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes())


def test_a_torchvision_set_is_its_test_part_in_rgb_with_its_class_names(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    raw = tmp_path / "mnist_root" / "MNIST" / "raw"
    _idx(raw / "t10k-images-idx3-ubyte", 2051, images)
    _idx(raw / "t10k-labels-idx1-ubyte", 2049, labels)
    # torchvision wants the training files there too before it reads the test ones
    _idx(raw / "train-images-idx3-ubyte", 2051, np.zeros((2, 28, 28), np.uint8))
    _idx(raw / "train-labels-idx1-ubyte", 2049, np.zeros(2, np.uint8))

    bench = _digits(tmp_path, {"name": "mnist", "group": "far", "source": "mnist", "root": "mnist_root"})
    split = bench.splits["ood_mnist"]
    import torchvision.datasets
    classes = torchvision.datasets.MNIST.classes
    assert split.sources == [f"mnist/{i}" for i in range(7)] and (split.labels == -1).all()
    assert split.class_names == [classes[t] for t in labels] and split.class_names[0] == "3 - three"
    for i in range(7):
        image = split.load_image(i)
        assert image.mode == "RGB" and image.size == (28, 28)
        assert (np.asarray(image) == images[i][:, :, None]).all()  # the written pixels, in every channel

    with pytest.raises(DatasetError) as err:  # not there, and not downloaded: the hint says how
        _digits(tmp_path, {"name": "svhn", "group": "far", "source": "svhn"})
    assert str(err.value).startswith("OOD set 'svhn': torchvision SVHN not found in ")
    assert "data.download=true" in str(err.value)


def _sets_item(root, *sets):
    """The command-line items giving data.root and data.ood_sets (YAML flow syntax, as a user types it)."""
    flow = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in s.items()) + "}" for s in sets)
    return [f"data.root={root}", f"data.ood_sets=[{flow}]"]


def test_check_of_a_misspelled_source_exits_2_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from wildcapture.paths import REPO_ROOT

    items = _sets_item(tmp_path, {"name": "ssb", "group": "near", "source": "imagelst", "list": "ssb.txt"})
    result = subprocess.run([sys.executable, "Train_Vit_Classifier/train.py", "--check", *items,
                             f"output_dir={tmp_path / 'vit'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr == ("error: OOD set 'ssb': unknown source 'imagelst'; valid sources: "
                             f"{', '.join(OOD_SOURCES)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_check_of_a_missing_list_exits_2_naming_it_and_a_good_one_plans_each_sets_folders(tmp_path, capsys):
    from stage_helpers import TINY_VIT
    from wildcapture.cli import stage_main
    from wildcapture.paths import REPO_ROOT

    _png(tmp_path / "far" / "a.png", 0)
    (tmp_path / "tin.txt").write_text("far/a.png 0\n")
    stage1 = [REPO_ROOT / "Train_Vit_Classifier" / "config", "", "wildcapture.stages.train_classifier"]
    missing = _sets_item(tmp_path, {"name": "tin", "group": "near", "source": "imagelist", "list": "lists/tin.txt"})
    with pytest.raises(SystemExit) as exit_:
        stage_main(*stage1, [*TINY_VIT, f"output_dir={tmp_path / 'vit'}", *missing, "--check"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err == f"error: OOD set 'tin': image list not found: {tmp_path / 'lists' / 'tin.txt'} (its list)\n"

    good = _sets_item(tmp_path, {"name": "heldout", "group": "near", "source": "classes"},
                      {"name": "tin", "group": "near", "source": "imagelist", "list": "tin.txt"},
                      {"name": "tex", "group": "far", "source": "imagefolder", "root": "far"})
    stage_main(*stage1, [*TINY_VIT, f"output_dir={tmp_path / 'vit'}", *good, "--check"])
    assert capsys.readouterr().out.endswith("check passed; nothing was written\n")
    # the whole pipeline's check plans one stage-2 folder per set (stage 2 tests on stage 1's data)
    import importlib.util
    spec = importlib.util.spec_from_file_location("reproduce_check", REPO_ROOT / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    exp = f"ood-sets-check-{tmp_path.name}"
    reproduce.main(["--check", "device=cpu", f"exp={exp}", *good])
    out = capsys.readouterr().out
    planned = [line.strip() for line in out.splitlines() if f"heatmaps/{exp}/" in line and line.endswith("index.csv")]
    assert [p.split("/")[-2] for p in planned] == ["train_id", "val_id", "test_id", "ood_heldout", "ood_tin", "ood_tex"]
    assert out.endswith("check passed; nothing was written\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far", "tin.txt"]
    assert not (REPO_ROOT / "data" / "heatmaps" / exp).exists() and not (REPO_ROOT / "results" / exp).exists()


def test_a_build_without_download_downloads_no_set_even_one_that_asks(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeMNIST:  # records how it was asked for; three black images
        classes = ["0 - zero"]

        def __init__(self, root, download, train):
            calls.append({"root": root, "download": download, "train": train})
            self.targets = [0, 0, 0]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.new("L", (4, 4)), 0

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    asks = {"name": "mnist", "group": "far", "source": "mnist", "download": True}
    follows = {"name": "mnist2", "group": "far", "source": "mnist", "root": "elsewhere"}
    cfg = {"name": "digits", "root": str(tmp_path), "download": True, "ood_sets": [asks, follows]}
    bench = build_splits(cfg)
    assert calls == [{"root": str(tmp_path), "download": True, "train": False},
                     {"root": str(tmp_path / "elsewhere"), "download": True, "train": False}]
    calls.clear()
    checked = build_splits(cfg, download=False)  # what the checks build: nothing is fetched
    assert [c["download"] for c in calls] == [False, False]
    assert checked.protocol == bench.protocol and checked.protocol.to_record()[0]["download"] is True
    assert checked.splits["ood_mnist"].sources == ["mnist/0", "mnist/1", "mnist/2"]
    calls.clear()
    build_splits({**cfg, "download": False})  # data.download false: a set's own download: true still fetches it
    assert [c["download"] for c in calls] == [True, False]
