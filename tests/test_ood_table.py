"""OOD table: rows with the right metrics, Markdown caption, CSV/JSON round trip."""
import json

import numpy as np
import pytest

from wildcapture.ood.metrics import METRIC_NAMES, ood_metrics
from wildcapture.ood.table import (COLUMNS, CONVENTION, MEAN, markdown_table, ood_rows, ood_set_rows, read_table,
                                   to_markdown, write_table)

SCORES = {
    "cae": (np.array([0.1, 0.4, 0.35]), np.array([0.8, 0.6, 0.2])),
    "msp": (np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0])),
}


def test_rows_hold_metrics_and_counts():
    rows = ood_rows(SCORES)
    assert [r["detector"] for r in rows] == ["cae", "msp"]
    assert all(tuple(r) == COLUMNS and r["ood_set"] == r["group"] == "" for r in rows)
    assert [(r["ood_set"], r["group"]) for r in ood_rows(SCORES, "cifar100", "near")] == [("cifar100", "near")] * 2
    assert rows[0]["auroc"] == pytest.approx(7 / 9) and rows[0]["fpr95"] == pytest.approx(2 / 3)
    assert (rows[0]["n_id"], rows[0]["n_ood"]) == (3, 3) and (rows[1]["n_id"], rows[1]["n_ood"]) == (3, 2)
    assert rows[1]["auroc"] == 1.0 and rows[1]["fpr95"] == 0.0


def test_markdown_has_caption_convention_and_4_decimals():
    md = to_markdown(ood_rows(SCORES, "cifar100", "near"), caption="CIFAR-10 vs CIFAR-100.")
    assert md.startswith("CIFAR-10 vs CIFAR-100.\n\n" + CONVENTION)
    assert CONVENTION in md and "OOD = positive class" in md and "fractions in [0,1]" in md
    assert "| Detector | OOD set | Group | AUROC | AUPR-IN | AUPR-OUT | FPR@95TPR | N ID | N OOD |" in md
    assert "| cae | cifar100 | near | 0.7778 | 0.8056 | 0.8667 | 0.6667 | 3 | 3 |" in md
    assert "| msp | cifar100 | near | 1.0000 | 1.0000 | 1.0000 | 0.0000 | 3 | 2 |" in md


def test_markdown_table_lines_and_the_whole_uncaptioned_table():
    assert markdown_table(("A", "B", "C"), [("x", "1", "p"), ("y", "22", "q")], "lrl") == [
        "| A | B | C |", "|---|---:|---|", "| x | 1 | p |", "| y | 22 | q |"]
    assert to_markdown(ood_rows(SCORES, "heldout", "near")) == "\n".join([
        CONVENTION, "", "| Detector | OOD set | Group | AUROC | AUPR-IN | AUPR-OUT | FPR@95TPR | N ID | N OOD |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| cae | heldout | near | 0.7778 | 0.8056 | 0.8667 | 0.6667 | 3 | 3 |",
        "| msp | heldout | near | 1.0000 | 1.0000 | 1.0000 | 0.0000 | 3 | 2 |"]) + "\n"


def test_write_table_round_trip(tmp_path):
    rows = ood_rows(SCORES, "heldout", "near")
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


SETS = {  # detector -> (ID scores, {set: scores})
    "cae": (np.array([0.1, 0.4, 0.35, 0.2]), {"a": np.array([0.8, 0.6, 0.2]), "b": np.array([0.3, 0.5]),
                                              "c": np.array([0.9, 0.05, 0.7, 0.5]), "v": np.array([0.6])}),
    "msp": (np.array([0.0, 1.0, 2.0, 0.5]), {"a": np.array([3.0, 0.2]), "b": np.array([1.5, 0.1, 2.5]),
                                              "c": np.array([4.0]), "v": np.array([0.7, 0.8])}),
}
GROUPS = {"a": "near", "b": "near", "c": "far", "v": "val"}


def test_set_rows_are_each_sets_metrics_then_the_near_and_far_means():
    rows = ood_set_rows(SETS, GROUPS)
    assert [(r["detector"], r["ood_set"], r["group"]) for r in rows] == [
        *((d, s, GROUPS[s]) for s in GROUPS for d in SETS),
        ("cae", MEAN, "near"), ("msp", MEAN, "near"), ("cae", MEAN, "far"), ("msp", MEAN, "far")]
    for row in rows[:8]:  # each set's row: that set against the same ID scores
        id_s, ood = SETS[row["detector"]]
        assert {m: row[m] for m in METRIC_NAMES} == ood_metrics(id_s, ood[row["ood_set"]])
        assert (row["n_id"], row["n_ood"]) == (4, len(ood[row["ood_set"]]))
    for row in rows[8:]:  # a mean row: the plain mean of its group's set rows (the val set is in none)
        id_s, ood = SETS[row["detector"]]
        members = [s for s, g in GROUPS.items() if g == row["group"]]
        for m in METRIC_NAMES:
            assert row[m] == pytest.approx(np.mean([ood_metrics(id_s, ood[s])[m] for s in members]), abs=1e-15)
        assert row["n_id"] == 4 and row["n_ood"] == sum(len(ood[s]) for s in members)


def test_one_set_has_no_mean_row_and_its_rows_are_ood_rows():
    one = {d: (id_s, {"heldout": ood["a"]}) for d, (id_s, ood) in SETS.items()}
    assert ood_set_rows(one, {"heldout": "near"}) == ood_rows(
        {d: (id_s, ood["a"]) for d, (id_s, ood) in SETS.items()}, "heldout", "near")


def test_a_group_without_a_set_has_no_mean_row():
    rows = ood_set_rows(SETS, {"a": "near", "b": "near"})
    assert [(r["ood_set"], r["group"]) for r in rows] == [("a", "near")] * 2 + [("b", "near")] * 2 + [
        (MEAN, "near")] * 2
