"""The learning-rate finder: on real ImageNet features of real images (scikit-learn's digits, upscaled) the
sweep's loss falls and then blows up, and training at the suggested rate learns without diverging."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from tlpipe import models
from tlpipe.config.phases import Phase
from tlpipe.data.splitdir import Data
from tlpipe.errors import PipelineError
from tlpipe.inference import Preproc
from tlpipe.runtime import set_seed
from tlpipe.training.loop import fit
from tlpipe.training.lr_find import RULE, Sweep, rates, report, suggest, sweep

SIZE = 32
AUG = {"crop_scale_min": 0.9, "rotation": 0, "hflip": 0.0, "color_jitter": 0.0}
PARAMS = {"lr_find": {"steps": 120, "start_lr": 1e-6, "end_lr": 10.0}}


def digits(lo: int, hi: int) -> Data:
    """Digits lo..hi-1 as 32x32 RGB uint8 (8x8 grey upscaled)."""
    d = load_digits()
    x = torch.tensor(d.images[lo:hi], dtype=torch.float32).unsqueeze(1) / 16.0 * 255.0
    x = torch.nn.functional.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
    return Data(x.clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous(),
                torch.tensor(d.target[lo:hi], dtype=torch.long))


@pytest.fixture(scope="module")
def data() -> tuple[Data, Data]:
    return digits(0, 300), digits(300, 400)


def preproc() -> Preproc:
    sp = models.spec("efficientnet_lite0")
    return Preproc(sp.mean, sp.std, SIZE, torch.device("cpu"))


def phase(**kw) -> Phase:
    base = dict(epochs=4, batch_size=32, optimizer="adam", lr=0.001, weight_decay=0.0, momentum=0.9,
                label_smoothing=0.0, scheduler="none", step_size=2, gamma=0.5)
    return Phase(**{**base, **kw})


def net() -> models.Net:
    set_seed(0)
    return models.build("efficientnet_lite0", 10, pretrained=True)


@pytest.fixture(scope="module")
def head_sweep(data) -> Sweep:
    return sweep(net(), data[0], phase(), preproc(), AUG, **{k.removesuffix("_lr"): v for k, v in
                                                               PARAMS["lr_find"].items()}, seed=0)


def test_head_sweep_falls_then_blows_up(head_sweep) -> None:
    s = head_sweep
    assert len(s.lrs) == len(s.losses) == len(s.smoothed) >= 20
    assert s.lrs == sorted(s.lrs) and s.lrs[0] == pytest.approx(1e-6)
    low = min(s.smoothed)
    assert low < 0.7 * s.smoothed[0], (s.smoothed[0], low)  # it learned: the loss fell well below its start
    assert s.diverged and len(s.lrs) < 120  # rate 10 on a linear head: the sweep stopped at the blow-up
    assert s.smoothed[-1] > 4 * low or not math.isfinite(s.smoothed[-1])
    assert s.suggestion == pytest.approx(s.lr_min / 10)
    assert 1e-5 < s.suggestion < 1.0


def test_training_at_the_suggestion_learns_without_diverging(data, head_sweep) -> None:
    train, valid = data
    res = fit(net(), train, valid, phase(lr=head_sweep.suggestion, epochs=4), preproc(), AUG)
    losses = [h["train_loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert res.best_val_acc > 0.6, res.best_val_acc  # 10 classes: chance is 0.1
    # 100 times the rate of the lowest loss is past the blow-up: the same training does worse
    fast = fit(net(), train, valid, phase(lr=head_sweep.lr_min * 100, epochs=4), preproc(), AUG)
    assert fast.history[-1]["train_loss"] > losses[-1]


def test_finetune_sweep_on_the_cached_prefix(data, head_sweep) -> None:
    start = net()
    fit(start, data[0], data[1], phase(lr=head_sweep.suggestion, epochs=2), preproc(), AUG)
    s = sweep(start, data[0], phase(unfreeze_blocks=1, backbone_lr_mult=0.5), preproc(), AUG, steps=60,
              start=1e-6, end=1.0, seed=0)
    assert all(math.isfinite(v) for v in s.smoothed[:10])
    assert s.lrs[0] <= s.lr_min <= s.lrs[-1] and (s.lr_min, s.suggestion, s.rule) == suggest(s.lrs, s.smoothed)


def test_same_seed_same_sweep(data) -> None:
    a = sweep(net(), data[0], phase(), preproc(), AUG, steps=15, start=1e-4, end=1e-2, seed=3)
    b = sweep(net(), data[0], phase(), preproc(), AUG, steps=15, start=1e-4, end=1e-2, seed=3)
    assert a.losses == b.losses


def test_suggest_reads_the_lowest_smoothed_loss() -> None:
    lrs = rates(1e-4, 1.0, 5)
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert suggest(lrs, [2.0, 1.5, 0.9, 1.2, 9.0]) == (pytest.approx(1e-2), pytest.approx(1e-3), "min/10")
    # the first 10 steps are left out: an unsettled average's low start is not the minimum
    lrs = rates(1e-6, 1.0, 20)
    smoothed = [0.01] + [1.0] * 14 + [0.5, 0.6, 2.0, 5.0, 9.0]
    assert suggest(lrs, smoothed) == (pytest.approx(lrs[15]), pytest.approx(lrs[15] / 10), "min/10")


def test_a_flat_sweep_suggests_a_third_of_its_edge_not_its_noise() -> None:
    """From a trained head the loss cannot fall: it wobbles within a percent, then rises. Its noisy minimum
    (here at step 12, 5e-6) says nothing; the last rate before the loss is 5% above it does."""
    lrs = rates(1e-6, 1.0, 40)
    flat = [0.5 + (0.004 if i % 2 else -0.004) for i in range(30)]  # minimum 0.496 at every even step
    flat[12] = 0.495
    rising = flat + [0.51, 0.53, 0.7, 1.5, float("inf")]  # 0.51 is within 5% of 0.495; 0.53 is not
    assert suggest(lrs, rising) == (pytest.approx(lrs[12]), pytest.approx(lrs[30] / 3), "edge/3")
    assert suggest(lrs, flat + [float("nan")]) == (pytest.approx(lrs[12]), pytest.approx(lrs[29] / 3), "edge/3")
    assert suggest(lrs[:30], flat)[1:] == (pytest.approx(lrs[29] / 3), "edge/3")  # never rose: its last rate
    assert suggest(lrs, flat)[1:] == (pytest.approx(lrs[29] / 3), "edge/3")  # the last rate it got to, not lrs[-1]
    # a fall of over 10% of the level before the minimum is not flat: min/10 as before
    falling = [1.0] * 12 + [0.95, 0.88, 0.92, 2.0]
    assert suggest(lrs[:16], falling) == (pytest.approx(lrs[13]), pytest.approx(lrs[13] / 10), "min/10")


@pytest.mark.parametrize("start,end,steps", [(1e-2, 1e-3, 10), (0.0, 1.0, 10), (1e-3, 1e-1, 1)])
def test_bad_range_is_one_clear_error(start, end, steps) -> None:
    with pytest.raises(PipelineError, match="lr_find"):
        rates(start, end, steps)


def test_report_gives_the_values_to_set() -> None:
    mk = lambda lr_min, n: Sweep([1e-3, lr_min], [1.0, 0.5], [1.0, 0.5], lr_min, lr_min / 10, n < 120)  # noqa: E731
    r = report({"head": mk(0.03, 50), "finetune": mk(0.006, 120)}, PARAMS)
    assert r["rule"] == RULE and r["steps"] == 120
    assert r["set"] == {"train.lr": 0.003, "finetune.lr_scale": 0.2}
    assert r["head"]["diverged"] and not r["finetune"]["diverged"]
    assert r["head"]["by"] == r["finetune"]["by"] == "min/10"
