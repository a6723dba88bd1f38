"""The precision rule (`runtime.resolve_precision`), bf16 stage-2 outputs stored as float32, and the refusal of
heatmaps made in another precision than the CAE learned. The CPU probe is patched in each test that needs it,
so they hold on any machine (conftest.py patches it to "no native bf16" for every test)."""
import csv

import numpy as np
import pytest
import torch
import yaml

import wildcapture.runtime as runtime
from wildcapture.detection.run import DetectOptions, detect
from wildcapture.errors import ConfigError, ProvenanceError
from wildcapture.provenance import check_same_precision
from wildcapture.runtime import heatmap_precision
from wildcapture.runtime import cpu_has_native_bf16, describe_precision, precision_context, resolve_precision
from wildcapture.stages import evaluate_classifier, score_cae

from stage_helpers import cae_config, stage2_config

SPLITS = ("train_id", "val_id", "test_id", "ood_heldout")  # the default protocol's splits

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda:0"), torch.device("mps")
# bf16 keeps 8 significant bits: one rounding is a relative error of up to 2**-8; a tiny ViT rounds its inputs,
# weights and activations a few times along 2 blocks, so its outputs stay within a few such steps of fp32.
BF16_STEPS = 8 * 2.0 ** -8


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_on_the_cpu_follows_the_probe(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for: emulated (slower) where the CPU lacks it
    said = describe_precision("bf16", "bf16", CPU)
    assert ("emulated, slower than fp32" in said) != native
    assert describe_precision("auto", expected, CPU) == (
        f"precision {expected} (auto on cpu {'with' if native else 'without'} native bf16)")


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_else_fp16_and_bf16_needs_the_gpu_to_have_it(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # the CPU's does not count on CUDA
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("fp32", CUDA) == "fp32"
    if has_bf16:
        assert resolve_precision("bf16", CUDA) == "bf16"
    else:
        with pytest.raises(ConfigError, match="bf16 was asked for but cuda:0 has no bf16"):
            resolve_precision("bf16", CUDA)


def test_mps_is_fp32_and_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", MPS) == "fp32"
    with pytest.raises(ConfigError, match="bf16 runs on cpu and cuda"):
        resolve_precision("bf16", MPS)
    with pytest.raises(ConfigError, match="precision 'fp16' is not valid; choose one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_the_probe_falls_back_to_no_when_torch_lacks_or_breaks_it(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_native_bf16() is False

    def broken():
        raise RuntimeError("probe changed")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    assert cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16() is True


def test_precision_context_runs_linear_layers_in_bf16_only_when_asked():
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    with precision_context(CPU, "fp32"):
        assert layer(x).dtype == torch.float32
    with precision_context(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16


def test_older_metas_read_amp_false_as_fp32_and_amp_true_as_unknown():
    assert heatmap_precision({"heatmap": {"kind": "cls_last", "precision": "bf16"}}) == "bf16"
    assert heatmap_precision({"heatmap": {"kind": "cls_last", "amp": False}}) == "fp32"
    assert heatmap_precision({"heatmap": {"kind": "cls_last", "amp": True}}) is None  # CUDA or CPU: not recorded
    old, fp32, bf16 = ({"heatmap": {"amp": True}}, {"heatmap": {"precision": "fp32"}},
                       {"heatmap": {"precision": "bf16"}})
    check_same_precision(old, bf16, "a", "b", "fix")  # unknown is not compared
    with pytest.raises(ProvenanceError, match="b were made in bf16 but a were made in fp32"):
        check_same_precision(fp32, bf16, "a", "b", "fix")


@pytest.fixture(scope="module")
def bf16_stage2(tiny_vit_checkpoint, tmp_path_factory):
    """A stage-2 run with heatmap.precision=bf16 of the same classifier and settings as `tiny_heatmaps` (fp32)."""
    out = tmp_path_factory.mktemp("stage2_bf16")
    evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, out, "heatmap.precision=bf16"))
    return out


@pytest.mark.e2e
def test_bf16_stage2_writes_float32_arrays_close_to_fp32(bf16_stage2, tiny_heatmaps):
    meta = yaml.safe_load((bf16_stage2 / "heatmaps" / "heatmaps_meta.yaml").read_text())
    assert meta["heatmap"]["precision"] == "bf16"
    assert yaml.safe_load((tiny_heatmaps / "heatmaps" / "heatmaps_meta.yaml").read_text())["heatmap"][
        "precision"] == "fp32"  # auto on a CPU without native bf16 (the probe is patched)
    for split in SPLITS:
        for name in ("heatmaps", "logits", "features"):
            bf16 = np.load(bf16_stage2 / "heatmaps" / split / f"{name}.npy")
            fp32 = np.load(tiny_heatmaps / "heatmaps" / split / f"{name}.npy")
            assert bf16.dtype == np.float32 and bf16.shape == fp32.shape, name
            assert not np.array_equal(bf16, fp32), f"{name}: bf16 ran, so the values differ from fp32"
            np.testing.assert_allclose(bf16, fp32, rtol=0, atol=BF16_STEPS * np.abs(fp32).max(), err_msg=name)


def test_stage2_says_its_precision_first_and_refuses_to_replace_another_precision(bf16_stage2, tiny_vit_checkpoint,
                                                                                  capsys):
    with pytest.raises(ProvenanceError, match="heatmap.precision 'bf16'; this run would replace them with 'fp32'"):
        evaluate_classifier.run(stage2_config(tiny_vit_checkpoint, bf16_stage2, "heatmap.precision=fp32"))
    with pytest.raises(ConfigError, match="heatmap.precision must be one of auto, fp32, bf16; got 'fp16'"):
        evaluate_classifier.check_config(stage2_config(tiny_vit_checkpoint, bf16_stage2, "heatmap.precision=fp16"))


def test_stage4_refuses_bf16_heatmaps_for_a_cae_that_learned_fp32_ones(bf16_stage2, tiny_cae, tmp_path):
    cfg = cae_config(bf16_stage2 / "heatmaps", tiny_cae, f"results_dir={tmp_path / 'results'}",
                     f"test.baseline_scores={bf16_stage2 / 'results' / 'baseline_scores.csv'}")
    with pytest.raises(ProvenanceError, match=r"test heatmaps .* were made in bf16 but the heatmaps CAE .* learned "
                                              r"were made in fp32 \(heatmap.precision\); retrain the CAE"):
        score_cae.run(cfg)
    assert not (tmp_path / "results" / "ood_table.json").exists()


@pytest.mark.e2e
def test_detect_says_its_precision_and_bf16_scores_stay_close_to_fp32(tiny_cae, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cae = tiny_cae / "cae" / "best.pth"
    scores = {}
    for precision in ("fp32", "bf16"):
        detect(folder, cae, tmp_path / f"{precision}.csv", DetectOptions(batch_size=2, device="cpu",
                                                                         precision=precision))
        first = capsys.readouterr().out.splitlines()[0]
        assert f"precision {precision} (asked for" in first  # bf16 adds: emulated (the probe is patched to "no")
        assert "the CAE learned heatmaps of precision fp32" in first
        with open(tmp_path / f"{precision}.csv", newline="") as handle:
            scores[precision] = np.array([float(r["ood_score"]) for r in csv.DictReader(handle)])
    assert not np.array_equal(scores["bf16"], scores["fp32"])  # bf16 ran
    np.testing.assert_allclose(scores["bf16"], scores["fp32"], rtol=BF16_STEPS)
    detect(folder, cae, tmp_path / "auto.csv", DetectOptions(batch_size=2, device="cpu"))
    assert "precision fp32 (auto on cpu without native bf16)" in capsys.readouterr().out.splitlines()[0]
