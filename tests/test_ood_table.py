"""OOD table: rows with the right metrics, Markdown caption, CSV/JSON round trip."""
import json

import numpy as np
import pytest

from wildcapture.ood.table import CONVENTION, markdown_table, ood_rows, read_table, to_markdown, write_table

SCORES = {
    "cae": (np.array([0.1, 0.4, 0.35]), np.array([0.8, 0.6, 0.2])),
    "msp": (np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0])),
}


def test_rows_hold_metrics_and_counts():
    rows = ood_rows(SCORES)
    assert [r["detector"] for r in rows] == ["cae", "msp"]
    assert rows[0]["auroc"] == pytest.approx(7 / 9) and rows[0]["fpr95"] == pytest.approx(2 / 3)
    assert (rows[0]["n_id"], rows[0]["n_ood"]) == (3, 3) and (rows[1]["n_id"], rows[1]["n_ood"]) == (3, 2)
    assert rows[1]["auroc"] == 1.0 and rows[1]["fpr95"] == 0.0


def test_markdown_has_caption_convention_and_4_decimals():
    md = to_markdown(ood_rows(SCORES), caption="CIFAR-10 vs CIFAR-100.")
    assert md.startswith("CIFAR-10 vs CIFAR-100.\n\n" + CONVENTION)
    assert CONVENTION in md and "OOD = positive class" in md and "fractions in [0,1]" in md
    assert "| Detector | AUROC | AUPR-IN | AUPR-OUT | FPR@95TPR | N ID | N OOD |" in md
    assert "| cae | 0.7778 | 0.8056 | 0.8667 | 0.6667 | 3 | 3 |" in md
    assert "| msp | 1.0000 | 1.0000 | 1.0000 | 0.0000 | 3 | 2 |" in md


def test_markdown_table_lines_and_the_whole_uncaptioned_table():
    assert markdown_table(("A", "B", "C"), [("x", "1", "p"), ("y", "22", "q")], "lrl") == [
        "| A | B | C |", "|---|---:|---|", "| x | 1 | p |", "| y | 22 | q |"]
    assert to_markdown(ood_rows(SCORES)) == "\n".join([
        CONVENTION, "", "| Detector | AUROC | AUPR-IN | AUPR-OUT | FPR@95TPR | N ID | N OOD |",
        "|---|---:|---:|---:|---:|---:|---:|", "| cae | 0.7778 | 0.8056 | 0.8667 | 0.6667 | 3 | 3 |",
        "| msp | 1.0000 | 1.0000 | 1.0000 | 0.0000 | 3 | 2 |"]) + "\n"


def test_write_table_round_trip(tmp_path):
    rows = ood_rows(SCORES)
    paths = write_table(rows, tmp_path / "out", caption="digits")
    assert {p.name for p in paths.values()} == {"ood_table.md", "ood_table.csv", "ood_table.json"}
    assert "digits" in paths["md"].read_text()
    for path in (paths["csv"], paths["json"]):
        back = read_table(path)
        assert [r["detector"] for r in back] == ["cae", "msp"]
        for r, b in zip(rows, back):
            assert b == r  # full precision survives
    payload = json.loads(paths["json"].read_text())
    assert payload["convention"] == CONVENTION and payload["caption"] == "digits"
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_empty_split_names_the_detector():
    with pytest.raises(ValueError, match="detector 'knn': empty OOD split"):
        ood_rows({"knn": (np.array([1.0]), np.array([]))})
