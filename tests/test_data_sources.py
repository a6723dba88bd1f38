"""Missing data sets: the error says where to get the data and how to lay it out."""
import pytest

from wildcapture.data.build import build_splits
from wildcapture.errors import DatasetError

DRIVE = "https://drive.google.com/drive/folders/1823UnVK94NYRTokxkzBbgeYRVL8YSPG4"


def test_missing_wildcapture_folder_names_the_download_and_the_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_splits({"name": "wildcapture", "root": str(tmp_path)})
    message = str(err.value)
    assert DRIVE in message and "github.com/lcultrera/WildCapture" in message
    assert f"{tmp_path / 'WildCapture' / 'Red Deer'}/*.jpg" in message and "data.root" in message


def test_missing_species_folders_are_named_with_the_download(tmp_path):
    (tmp_path / "WildCapture" / "Red_Deer").mkdir(parents=True)
    (tmp_path / "WildCapture" / "grey-wolf").mkdir()
    with pytest.raises(DatasetError) as err:
        build_splits({"name": "wildcapture", "root": str(tmp_path), "id_classes": ["Red Deer", "Grey Wolf"],
                         "ood_classes": ["Wild Cat", "Crested Porcupine"]})
    message = str(err.value)
    assert "['Wild Cat', 'Crested Porcupine']" in message and "['Red_Deer', 'grey-wolf']" in message
    assert DRIVE in message and "one folder per species" in message


def test_missing_cifar_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_splits({"name": "cifar100", "root": str(tmp_path), "download": False})
    message = str(err.value)
    assert message.startswith(f"CIFAR-100 not found or corrupted in {tmp_path / 'cifar-100-python'}: "
                              "set data.download=true to download it")
    assert "download=True" not in message  # torchvision's own hint names its argument, not our key
