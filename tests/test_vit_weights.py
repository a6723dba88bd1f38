"""Loading classifier weights: our checkpoints, the paper's `modelVit.` state dict, DDP prefixes."""
import json
from pathlib import Path

import pytest
import torch

from wildcapture.storage import load_checkpoint, save_checkpoint
from wildcapture.vit import (WeightsMismatchError, build_vit, check_compatible, load_weights,
                             model_args_from_config, strip_wrapper_prefixes)

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {"name": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
        "num_heads": 2, "pretrained": False}


def tiny(num_classes: int = 3) -> torch.nn.Module:
    return build_vit(model_args_from_config(TINY, num_classes))


def test_model_args_keep_only_set_overrides():
    args = model_args_from_config({**TINY, "mlp_ratio": None}, 5)
    assert args == {"name": "vit_tiny_patch16_224", "num_classes": 5,
                    "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}
    assert tiny(5).head.out_features == 5


@pytest.mark.parametrize("prefix", ["modelVit.", "model_vit.", "module.", "module.modelVit."])
def test_paper_and_ddp_prefixes_load_exactly(tmp_path, prefix):
    source = tiny()
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, tmp_path / "w.pt")
    target = tiny()
    load_weights(target, tmp_path / "w.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    torch.save({"modelVit." + k: v for k, v in tiny(7).state_dict().items()}, tmp_path / "paper.pt")
    with pytest.raises(WeightsMismatchError, match="has 7 classes but the model has 3.*data.id_classes"):
        load_weights(tiny(3), tmp_path / "paper.pt")


def test_architecture_mismatch_names_a_key(tmp_path):
    other = build_vit(model_args_from_config({**TINY, "depth": 3}, 3))
    save_checkpoint({"model": other.state_dict()}, tmp_path / "deep.pth")
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \(e.g. blocks.2"):
        load_weights(tiny(3), tmp_path / "deep.pth")


def test_checkpoint_round_trip_is_atomic_and_weights_only(tmp_path):
    model = tiny()
    save_checkpoint({"model": model.state_dict(), "class_names": ["a", "b", "c"], "epoch": 2}, tmp_path / "c.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary file left behind
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert loaded["class_names"] == ["a", "b", "c"] and loaded["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_checkpoint(tmp_path / "nothere.pth")


def test_paper_state_dict_keys_and_shapes_fit_vit_base_with_7_classes():
    reference = json.loads((FIXTURES / "paper_vit_state_dict.json").read_text())["state_dict"]
    state = strip_wrapper_prefixes({k: torch.empty(shape, device="meta") for k, shape in reference.items()})
    with torch.device("meta"):  # shapes only: skips allocating and initialising 86M parameters
        model = build_vit({"name": "vit_base_patch16_224", "num_classes": 7, "kwargs": {}})
        five_classes = build_vit({"name": "vit_base_patch16_224", "num_classes": 5, "kwargs": {}})
    check_compatible(model, state, "paper weights")
    with pytest.raises(WeightsMismatchError, match="has 7 classes but the model has 5"):
        check_compatible(five_classes, state, "paper")


def test_corrupt_checkpoint_is_named(tmp_path):
    from wildcapture.errors import CheckpointError

    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(tmp_path / "broken.pth")
