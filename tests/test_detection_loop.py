"""The loop from a flag back into the classifier, on digits written as JPEG files: a classifier of 0-4 flags
a held-out digit, detect exports the flagged crops, they are sorted into a new class folder, stages 1-3
retrain, and detect then names the new digit and flags fewer of its images."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from wildcapture.config import load_config
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.paths import REPO_ROOT
from wildcapture.stages import evaluate_classifier, train_cae, train_classifier

ID_DIGITS, NEW, OOD = ["0", "1", "2", "3", "4"], "7", "8"
SCORE = "fusion"  # the digits default: the CAE's error fused with Mahalanobis


def _write(folder: Path, images: np.ndarray, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((16, 16), Image.NEAREST).save(
            folder / name, quality=95, subsampling=0)  # JPEG like a camera's, and like the exported crops


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _train(train_root: Path, out: Path, classes: list[str]) -> Path:
    """Stages 1-3 on the class folders under `train_root` (OOD for stage 2's table: the digit 8); returns the CAE."""
    data = [f"data.name=imagefolder", f"data.root={train_root}", f"data.id_classes=[{','.join(classes)}]",
            f"data.ood_classes=[{OOD}]", "device=cpu"]
    train_classifier.run(load_config(REPO_ROOT / "Train_Vit_Classifier" / "config", None, [
        *data, f"output_dir={out / 'vit'}", "train.epochs=30", "train.batch_size=32", "model.depth=2",
        "train.balanced_sampling=true"]))
    evaluate_classifier.run(load_config(REPO_ROOT / "Test_Classifier" / "config", None, [
        *data, f"checkpoint={out / 'vit' / 'best.pth'}", f"heatmaps_dir={out / 'heatmaps'}",
        f"results_dir={out / 'results'}", "gallery_size=0"]))
    train_cae.run(load_config(REPO_ROOT / "AutoEncoder" / "config", None, [
        "device=cpu", f"heatmaps_dir={out / 'heatmaps'}", f"output_dir={out / 'cae'}",
        f"results_dir={out / 'results'}", "train.epochs=40"]))
    return out / "cae" / "best.pth"


def _share_flagged(rows: list[dict[str, str]], digit: str) -> float:
    mine = [r for r in rows if r["image"].startswith(f"{digit}_") and not r["failure"]]
    return sum(r["ood_flag"] == "True" for r in mine) / len(mine)


@pytest.mark.e2e
def test_flagged_crops_become_a_new_class_that_detect_then_names(tmp_path):
    digits = load_digits()
    by_digit = {str(d): digits.images[digits.target == d] for d in range(10)}
    train = tmp_path / "train"
    for digit in [*ID_DIGITS, OOD]:
        images = by_digit[digit][:120]
        _write(train / digit, images, [f"{digit}_{i:03d}.jpg" for i in range(len(images))])
    season, later = tmp_path / "season", tmp_path / "later"
    for digit in ID_DIGITS:  # unseen images of the known digits, beside the new one
        _write(season, by_digit[digit][120:140], [f"{digit}_{i:03d}.jpg" for i in range(20)])
    sevens = by_digit[NEW]
    _write(season, sevens[:140], [f"{NEW}_{i:03d}.jpg" for i in range(140)])
    _write(later, sevens[140:], [f"{NEW}_{i:03d}.jpg" for i in range(140, len(sevens))])

    first = _train(train, tmp_path / "first", ID_DIGITS)
    options = DetectOptions(batch_size=64, device="cpu", workers=0, html=False, score=SCORE,
                            export_crops=tmp_path / "crops")
    detect(season, first, tmp_path / "season.csv", options)
    flagged_before = _share_flagged(_rows(tmp_path / "season.csv"), NEW)
    detect(later, first, tmp_path / "later-before.csv", DetectOptions(batch_size=64, device="cpu", workers=0,
                                                                      html=False, score=SCORE))
    assert flagged_before > 0.2  # the first classifier flags the unseen digit far above its 5% of val_id

    # the user sorts the flagged crops: the sevens become a new class, known digits flagged by mistake go home
    with open(tmp_path / "crops" / "manifest.csv", newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert {m["label"] for m in exported} == {"unknown"}
    for entry in exported:
        digit = entry["source_image"].split("_")[0]
        (train / digit).mkdir(exist_ok=True)
        shutil.copy(tmp_path / "crops" / entry["crop_file"], train / digit / f"season_{Path(entry['crop_file']).name}")
    new_images = len(list((train / NEW).iterdir()))
    assert new_images >= 30

    second = _train(train, tmp_path / "second", [*ID_DIGITS, NEW])
    detect(later, second, tmp_path / "later-after.csv", DetectOptions(batch_size=64, device="cpu", workers=0,
                                                                      html=False, score=SCORE))
    before, after = _rows(tmp_path / "later-before.csv"), _rows(tmp_path / "later-after.csv")
    named = sum(r["predicted_class"] == NEW for r in after) / len(after)
    # measured on a 2-core AMD EPYC: 0.74 named; flagged 0.33 before, 0.21 after (44 crops of the new digit)
    assert named > 0.5, f"{named:.2f} of the held-out sevens named {NEW}, after training on {new_images} crops"
    assert _share_flagged(after, NEW) < _share_flagged(before, NEW)
