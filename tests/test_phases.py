"""config.phases: a phase's settings are the `train` section overlaid with the phase section, lr resolved
(the phase's own lr, else train.lr × lr_scale); the defaults resolve to exactly the phases of before the
`train` section held the shared keys (so the default run's metrics stay byte-identical)."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest

from _support import REPO
from tlpipe.config import params as P
from tlpipe.config.phases import PHASES, Phase, phase_settings

COMMON = {"optimizer": "adam", "weight_decay": 0.0001, "momentum": 0.9, "label_smoothing": 0.1, "gamma": 0.5,
          "nesterov": False, "milestones": [], "warmup_epochs": 0, "plateau_patience": 2, "mixup_alpha": 0.0,
          "cutmix_alpha": 0.0, "early_stopping": 0, "grad_clip": 0.0,
          "keep": "val_acc"}  # keep: added since, its default the rule of before
HEAD = {**COMMON, "batch_size": 64, "lr": 0.001, "scheduler": "step", "step_size": 10}
TUNE = {**COMMON, "batch_size": 32, "lr": 0.0001, "scheduler": "cosine", "step_size": 2, "unfreeze_blocks": 2,
        "prefix_views": 2, "bn_train": False, "backbone_lr_mult": 1.0}
BEFORE = {  # every key of the four sections as params.yaml wrote them before the shared `train` section
    "train_head": {**HEAD, "epochs": 30, "feature_views": 2},  # (since then: finetune 4 groups, lr 0.0005, and
    "finetune": {**TUNE, "epochs": 5, "unfreeze_blocks": 4, "lr": 0.0005},  # 5 epochs; label smoothing 0.1)
    "retrain.head": {**HEAD, "epochs": 20, "feature_views": 1},
    "retrain.finetune": {**TUNE, "epochs": 3},
}


@pytest.fixture
def p() -> dict:
    return copy.deepcopy(P.load(REPO / "params.yaml"))


@pytest.mark.parametrize("name", PHASES)
def test_defaults_resolve_to_the_phases_of_before(p, name):
    got = phase_settings(p, name)
    assert got == BEFORE[name]
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in BEFORE[name].items()}  # 0.0 stays float
    before = Phase(**{**BEFORE[name], "milestones": ()})
    assert Phase.from_params(p, name) == before
    assert repr(asdict(Phase.from_params(p, name))) == repr(asdict(before))  # lr 0.0001, not 0.00010000000000000002


def test_lr_is_train_lr_times_lr_scale_unless_the_phase_sets_lr(p):
    p["train"]["lr"] = 0.0005
    assert [phase_settings(p, n)["lr"] for n in PHASES] == [0.0005, 0.00025, 0.0005, 0.00005]
    p["retrain"]["head"]["lr_scale"] = 2
    p["finetune"]["lr"] = 0.003  # its own lr wins over lr_scale
    assert phase_settings(p, "retrain.head")["lr"] == 0.001 and phase_settings(p, "finetune")["lr"] == 0.003
    assert "lr_scale" not in phase_settings(p, "retrain.head")


def test_a_phase_overrides_a_shared_key_only_for_itself(p):
    p["train"]["optimizer"] = "sgd"
    p["retrain"]["finetune"]["optimizer"] = "adamw"
    assert [phase_settings(p, n)["optimizer"] for n in PHASES] == ["sgd", "sgd", "sgd", "adamw"]
    assert "resume" not in phase_settings(p, "train_head")  # train's non-phase keys stay out
