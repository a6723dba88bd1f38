"""The evaluation protocol (`wildcapture.data.protocol`): a benchmark's ID splits and its named OOD sets."""
import pytest

from wildcapture.data.config import resolve_data_cfg
from wildcapture.data.protocol import (FIT_SPLITS, ID_SPLITS, OODSet, Protocol, has_held_out_classes, held_out_set,
                                       resolve_protocol)
from wildcapture.errors import DatasetError

SETS = [{"name": "heldout", "group": "near", "source": "classes"},
        {"name": "textures", "group": "far", "source": "imagefolder", "root": "dtd"},
        {"name": "tin", "group": "val", "source": "imagelist", "list": "val_tin.txt", "root": "images"}]


def test_splits_test_splits_and_ood_ness():
    protocol = Protocol.from_record(SETS)
    assert ID_SPLITS == ("train_id", "val_id", "test_id") and FIT_SPLITS == ("train_id", "val_id")
    assert protocol.ood_splits == ("ood_heldout", "ood_textures", "ood_tin")
    assert protocol.splits == ("train_id", "val_id", "test_id", "ood_heldout", "ood_textures", "ood_tin")
    assert protocol.test_splits == ("test_id", "ood_heldout", "ood_textures", "ood_tin")
    assert [protocol.is_ood(s) for s in protocol.splits] == [False] * 3 + [True] * 3
    assert [protocol.set_name(s) for s in protocol.splits] == ["", "", "", "heldout", "textures", "tin"]
    assert [protocol.set_name(s) for s in protocol.test_splits] == ["", "heldout", "textures", "tin"]
    assert protocol.ood_set("ood_textures") == OODSet("textures", "far", "imagefolder", (("root", "dtd"),))
    assert protocol.ood_set("ood_tin").option("list") == "val_tin.txt"
    assert protocol.ood_set("ood_tin").option("absent", 7) == 7
    assert [s.name for s in protocol.in_group("near")] == ["heldout"] and protocol.in_group("val")[0].name == "tin"
    for bad in ("test_ood", "ood_other", "heldout"):  # only the protocol's own splits: no guessing from the name
        with pytest.raises(KeyError, match=bad):
            protocol.is_ood(bad)
    with pytest.raises(KeyError, match="test_id"):
        protocol.ood_set("test_id")


def test_to_record_round_trips():
    protocol = Protocol.from_record(SETS)
    assert protocol.to_record() == SETS
    assert Protocol.from_record(protocol.to_record()) == protocol
    # options are kept sorted, so the order a set lists its keys in does not make another protocol
    shuffled = [{"root": "images", "source": "imagelist", "list": "val_tin.txt", "group": "val", "name": "tin"}]
    assert Protocol.from_record(shuffled) == Protocol.from_record(SETS[2:])


@pytest.mark.parametrize("record, words", [
    ([{"name": "a", "group": "middle", "source": "classes"}], ["[0] (a)", "near, far, val", "'middle'"]),
    ([{"name": "a", "group": "near", "source": "classes"}, {"name": "b", "group": "far", "source": "mnist"},
      {"name": "a", "group": "far", "source": "svhn"}], ["['a']", "more than once"]),
    ([{"name": "a", "source": "classes"}], ["[0] lacks group"]),
    ([{"group": "near"}], ["[0] lacks name, source"]),
    ([{"name": "two words", "group": "near", "source": "classes"}], ["[0].name", "'two words'"]),
    ([{"name": "../up", "group": "near", "source": "classes"}], ["[0].name", "'../up'"]),
    ([{"name": 3, "group": "near", "source": "classes"}], ["[0].name", "3"]),
    (["heldout"], ["[0] must be a mapping", "'heldout'"]),
    ([], ["declares no OOD set"]),
])
def test_from_record_refuses_bad_sets_with_one_clear_error(record, words):
    with pytest.raises(DatasetError) as err:
        Protocol.from_record(record, where="data.ood_sets")
    assert str(err.value).startswith("data.ood_sets")
    for word in words:
        assert word in str(err.value)


def _protocol(**data):
    return resolve_protocol(resolve_data_cfg(data))


def _sets(protocol):
    return [(s.name, s.group, s.source) for s in protocol.ood_sets]


def test_default_protocols_per_benchmark():
    # digits, wildcapture, imagefolder: their held-out classes, one near set
    for name in ("digits", "wildcapture", "imagefolder"):
        assert resolve_protocol({"name": name, "ood_sets": []}) == Protocol.from_record([held_out_set()])
    assert _sets(_protocol(name="digits")) == [("heldout", "near", "classes")]
    assert _protocol(name="digits").splits == ("train_id", "val_id", "test_id", "ood_heldout")
    # cifar10 / cifar100: the other CIFAR's test set; with fewer id_classes, their held-out classes too
    assert _sets(_protocol(name="cifar10")) == [("cifar100", "near", "cifar100")]
    assert _sets(_protocol(name="cifar100")) == [("cifar10", "near", "cifar10")]
    assert _sets(_protocol(name="cifar10", id_classes=["cat", "dog"])) == [
        ("cifar100", "near", "cifar100"), ("heldout", "near", "classes")]
    all_ten = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert _sets(_protocol(name="cifar10", id_classes=all_ten)) == [("cifar100", "near", "cifar100")]
    assert not has_held_out_classes({"name": "cifar10", "id_classes": None})
    assert has_held_out_classes({"name": "cifar100", "id_classes": ["apple"]})
    assert has_held_out_classes({"name": "digits", "id_classes": None})


def test_an_explicit_list_is_the_protocol():
    sets = [{"name": "mnist", "group": "far", "source": "mnist"},
            {"name": "tex", "group": "far", "source": "imagefolder", "root": "dtd/images"}]
    assert _sets(_protocol(name="digits", ood_sets=sets)) == [("mnist", "far", "mnist"), ("tex", "far", "imagefolder")]
    # a CIFAR benchmark with held-out classes keeps them as one more near set, unless the list has a classes set
    assert _sets(_protocol(name="cifar10", id_classes=["cat"], ood_sets=sets)) == [
        ("mnist", "far", "mnist"), ("tex", "far", "imagefolder"), ("heldout", "near", "classes")]
    own = [{"name": "open", "group": "near", "source": "classes"}, sets[0]]
    assert _sets(_protocol(name="cifar10", id_classes=["cat"], ood_sets=own)) == [
        ("open", "near", "classes"), ("mnist", "far", "mnist")]
    assert _sets(_protocol(name="cifar10", ood_sets=sets)) == [("mnist", "far", "mnist"), ("tex", "far", "imagefolder")]


@pytest.mark.parametrize("sets, words", [
    ("heldout", ["data.ood_sets must be a list", "'heldout'"]),
    ([{"name": "x", "group": "near", "source": "imagelst", "list": "a.txt"}],
     ["OOD set 'x'", "unknown source 'imagelst'", "imagelist"]),
    ([{"name": "x", "group": "near", "source": "imagelist", "lsit": "a.txt"}],
     ["OOD set 'x'", "unknown key(s) ['lsit']", "['list', 'root']"]),
    ([{"name": "x", "group": "near", "source": "imagelist"}], ["OOD set 'x'", "needs key(s) ['list']"]),
    ([{"name": "x", "group": "near", "source": "imagefolder"}], ["OOD set 'x'", "needs key(s) ['root']"]),
    ([{"name": "x", "group": "near", "source": "classes", "root": "d"}], ["unknown key(s) ['root']", "no other keys"]),
    ([{"name": "x", "group": "near", "source": "mnist", "train": True}], ["unknown key(s) ['train']"]),
    ([{"name": "x", "group": "close", "source": "classes"}], ["data.ood_sets[0] (x)", "near, far, val"]),
])
def test_the_data_config_checks_every_set_without_reading_a_file(sets, words):
    with pytest.raises(DatasetError) as err:
        resolve_data_cfg({"name": "digits", "ood_sets": sets})
    for word in words:
        assert word in str(err.value)
