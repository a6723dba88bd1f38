"""Stage 1's budget search (`benchmarks/budget_search.py`): the epochs a budget buys, and one tiny plan, run and
summary on digits."""
import json

import pytest
import torch

from wildcapture.config import ConfigError
from wildcapture.study import budget_search as search
from wildcapture.vit import build_vit

TINY = ["device=cpu", "data.limit_per_split=40", "train.batch_size=8", "train.eval_batch_size=16",
        "model.img_size=8", "model.patch_size=2", "model.num_heads=2"]


def test_epochs_in_budget_scales_the_timed_batches_to_the_epoch():
    # 1,280 images timed in 10 s -> 12,800 train images take 100 s, plus a 5 s validation pass: 105 s an epoch
    timing = {"epoch_s": 10.0, "images": 1280, "train_images": 12800, "val_s": 5.0, "setup_s": 20.0}
    assert search.epoch_seconds(timing) == pytest.approx(105.0)
    assert search.epochs_in_budget(timing, 250.0) == 2  # (250 - 20) / 105 = 2.19
    assert search.epochs_in_budget(timing, 335.0) == 3  # exactly 3 epochs after the set-up
    assert search.epochs_in_budget(timing, 30.0) == 1  # never fewer than one


def test_unknown_candidate_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown candidate.*d1x1.*known: d128x6"):
        search.pick_candidates(["d64x6", "d1x1"])


@pytest.mark.e2e
def test_plan_run_and_summary_on_tiny_digits(tmp_path):
    candidates = search.pick_candidates(["d64x6", "d128x4"])
    planned = search.plan(tmp_path, "digits", TINY, candidates, budget_s=1e-3)  # the real timing, in a child
    assert json.loads((tmp_path / "plan.json").read_text()) == planned
    for candidate in candidates:
        entry = planned["candidates"][candidate.name]
        assert entry["epochs"] == 1 and entry["timing"]["train_images"] == 40 and entry["timing"]["threads"] == 1
        assert entry["items"] == [f"model.embed_dim={candidate.embed_dim}", f"model.depth={candidate.depth}"]

    with pytest.raises(ConfigError, match="d96x6 is not in .*plan.json"):
        search.run(tmp_path, ["d64x6", "d96x6"])
    assert not (tmp_path / "runs").exists()  # every name checked before any run

    search.run(tmp_path, ["d64x6"])
    run = tmp_path / "runs" / "d64x6"
    checkpoint = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    assert checkpoint["model_args"]["kwargs"]["embed_dim"] == 64 and checkpoint["model_args"]["kwargs"]["depth"] == 6
    best_logged = max(json.loads(line)["val_acc"] for line in (run / "log.jsonl").read_text().splitlines())

    result = search.summarise(tmp_path)
    done, not_run = result["rows"]
    assert done["candidate"] == "d64x6" and done["val_acc"] == pytest.approx(best_logged)
    assert done["params"] == sum(p.numel() for p in build_vit(checkpoint["model_args"]).parameters())
    assert 0 <= done["test_acc"] <= 1 and (done["test_acc"] * 40) == pytest.approx(round(done["test_acc"] * 40))
    assert done["seconds"] > 0 and done["epochs"] == 1
    assert not_run["candidate"] == "d128x4" and not_run["val_acc"] is None and "not run" in result["markdown"]
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == result["rows"]

    plan_before = (tmp_path / "plan.json").read_text()
    with pytest.raises(ConfigError, match=r"runs holds runs trained to .*plan.json \(d64x6\)"):
        search.plan(tmp_path, "digits", TINY, candidates, budget_s=1e-3)
    assert (tmp_path / "plan.json").read_text() == plan_before  # the runs' plan stays
