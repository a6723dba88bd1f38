"""The seed study's fusion with every partner (`wildcapture.study.partner_fusion`) against hand-computed z-scores."""
import numpy as np
import pytest

from wildcapture.errors import DatasetError
from wildcapture.study.partner_fusion import check_agrees, fuse_with_partners


def test_each_partner_is_fused_by_val_id_z_scores():
    cae_val = np.array([3.0, 1.0, 3.0, 1.0])     # mean 2, population std 1
    energy_val = np.array([-1.0, 1.0, -1.0, 1.0])  # mean 0, std 1
    knn_val = np.array([0.5, 0.5, 1.5, 1.5])       # mean 1, std 0.5
    cae_test = {"test_id": np.array([2.0]), "ood_tin": np.array([4.0, 0.0])}  # z: 0 | 2, -2
    partner_test = {"energy": {"test_id": np.array([3.0]), "ood_tin": np.array([0.0, -2.0])},  # z: 3 | 0, -2
                    "knn": {"test_id": np.array([1.0]), "ood_tin": np.array([2.0, 0.0])}}      # z: 0 | 2, -2
    fused = fuse_with_partners(cae_val, {"energy": energy_val, "knn": knn_val}, cae_test, partner_test)
    assert set(fused) == {"cae+energy", "cae+knn"}
    np.testing.assert_allclose(fused["cae+energy"]["test_id"], [3.0])
    np.testing.assert_allclose(fused["cae+energy"]["ood_tin"], [2.0, -4.0])
    np.testing.assert_allclose(fused["cae+knn"]["test_id"], [0.0])
    np.testing.assert_allclose(fused["cae+knn"]["ood_tin"], [4.0, -4.0])
    # the CAE's val_id errors are stored sorted: their order does not matter
    again = fuse_with_partners(np.sort(cae_val), {"energy": energy_val}, cae_test, partner_test)
    np.testing.assert_array_equal(again["cae+energy"]["ood_tin"], fused["cae+energy"]["ood_tin"])
    # the run's fusion.weight: 2 (0.25 z_cae + 0.75 z_energy)
    weighted = fuse_with_partners(cae_val, {"energy": energy_val}, cae_test, partner_test, weight=0.25)
    np.testing.assert_allclose(weighted["cae+energy"]["test_id"], [4.5])
    np.testing.assert_allclose(weighted["cae+energy"]["ood_tin"], [2.0 * (0.5 + 0.0), 2.0 * (-0.5 - 1.5)])


def test_a_fusion_that_disagrees_with_stage_4_is_refused():
    scores = {"test_id": np.array([0.1, 0.2]), "ood_x": np.array([1.0])}
    check_agrees(scores, {"test_id": np.array([0.1, 0.2 * (1 + 1e-12)]), "ood_x": np.array([1.0])}, "run")
    with pytest.raises(DatasetError, match="split ood_x differ from stage 4's by up to 0.001"):
        check_agrees(scores, {"test_id": scores["test_id"], "ood_x": np.array([1.001])}, "run")
