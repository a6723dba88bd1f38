"""Checks of the AutoEncoder config (shared by stage 3 and stage 4, which read the same file)."""
from __future__ import annotations

from typing import Any

from wildcapture.cae.architectures import check_arch_settings
from wildcapture.cae.heatmap_data import NORMS, RESIZE_MODES
from wildcapture.config_checks import check_choice, check_number, check_positive_ints
from wildcapture.ood.fusion import fusion_partners
from wildcapture.runtime import pick_device


def check_cae_settings(cae_cfg: dict[str, Any]) -> None:
    """Raise ConfigError naming the key if `cae.*` holds a value the CAE cannot use (only the section of the
    chosen `cae.arch` is checked)."""
    check_arch_settings(cae_cfg)
    check_choice({"cae": cae_cfg}, "cae.resize", RESIZE_MODES)
    check_choice({"cae": cae_cfg}, "cae.norm", NORMS)


def check_config(cfg: dict[str, Any]) -> None:
    """Raise ConfigError naming the first value of the AutoEncoder config that stages 3-4 cannot use."""
    check_cae_settings(cfg["cae"])
    check_positive_ints(cfg, "train.epochs", "train.batch_size", "train.eval_batch_size", "test.batch_size")
    check_number(cfg, "train.lr", above=0)
    check_number(cfg, "train.weight_decay", minimum=0)
    check_number(cfg, "train.early_stopping", minimum=0, integer=True)
    check_number(cfg, "train.accept_fraction", above=0, maximum=1)
    check_number(cfg, "test.gallery_size", minimum=0, integer=True)
    check_number(cfg, "seed", minimum=0, integer=True)
    check_choice(cfg, "fusion.partner", tuple(fusion_partners()), optional=True)
    check_number(cfg, "fusion.weight", minimum=0, maximum=1)
    pick_device(cfg["device"])
