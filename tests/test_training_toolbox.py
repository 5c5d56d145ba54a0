"""The training toolbox: schedules, early stopping, gradient clipping, mixup/cutmix, dropout head,
augmentation engines, and resuming an interrupted phase bit-exactly."""

from __future__ import annotations

import math

import pytest
import torch

from tlpipe import models
from tlpipe.data.transforms import BatchAugment, V2Augment, build_v2, make_augment
from tlpipe.errors import PipelineError
from tlpipe.runtime import set_seed
from tlpipe.training.loop import fit
from tlpipe.training.mixing import Mixer
from tlpipe.training.optim import lr_factor
from tlpipe.training.resume import Resume
from test_training import AUG, data, fresh_net, phase, preproc  # noqa: F401 - fixtures and helpers shared

SIZE = 32


# ------------------------------------------------------------------ schedules
def test_lr_factor_step_multistep_cosine_warmup():
    assert [lr_factor(phase(scheduler="step", step_size=2, gamma=0.1), e) for e in range(5)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])
    ms = phase(scheduler="multistep", milestones=(1, 3), gamma=0.5)
    assert [lr_factor(ms, e) for e in range(5)] == pytest.approx([1, 0.5, 0.5, 0.25, 0.25])
    cos = phase(scheduler="cosine", epochs=4)
    assert [lr_factor(cos, e) for e in range(4)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    warm = phase(scheduler="cosine", epochs=6, warmup_epochs=2)
    f = [lr_factor(warm, e) for e in range(6)]
    assert f[:2] == pytest.approx([1 / 3, 2 / 3]) and f[2] == pytest.approx(1.0)
    assert f[2] > f[3] > f[4] > f[5] > 0
    assert [lr_factor(phase(scheduler="none"), e) for e in range(3)] == [1.0, 1.0, 1.0]


def test_fit_records_multistep_and_warmup_lrs(data):
    train, valid = data
    ph = phase(epochs=4, scheduler="multistep", milestones=(3,), gamma=0.1, warmup_epochs=1, lr=0.01)
    res = fit(fresh_net(), train, valid, ph, preproc("resnet18"), AUG)
    assert [h["lr"] for h in res.history] == pytest.approx([0.005, 0.01, 0.01, 0.001])


def test_onecycle_rises_then_falls_per_batch(data):
    train, valid = data
    ph = phase(epochs=6, scheduler="onecycle", warmup_epochs=2, lr=0.01, optimizer="sgd")
    lrs = [h["lr"] for h in fit(fresh_net(), train, valid, ph, preproc("resnet18"), AUG).history]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1
    assert max(lrs) <= 0.01 + 1e-9 and lrs[0] < max(lrs) / 5 and lrs[-1] < max(lrs) / 5


def test_plateau_lowers_lr_when_val_loss_stalls(data):
    train, valid = data
    # lr so small that val_loss cannot improve: plateau with patience 0 cuts lr after every epoch
    ph = phase(epochs=3, scheduler="plateau", plateau_patience=0, gamma=0.5, lr=1e-30, optimizer="sgd", momentum=0.0)
    lrs = [h["lr"] for h in fit(fresh_net(), train, valid, ph, preproc("resnet18"), AUG).history]
    assert lrs[1] == pytest.approx(lrs[0] * 0.5) and lrs[2] == pytest.approx(lrs[0] * 0.25)


# ------------------------------------------------------------------ early stopping, clipping
def test_early_stopping_stops_after_patience(data):
    train, valid = data
    ph = phase(epochs=20, early_stopping=2, lr=1e-30, optimizer="sgd", momentum=0.0)  # nothing can improve
    seen = []
    res = fit(fresh_net(), train, valid, ph, preproc("resnet18"), AUG, hook=seen.append)
    assert [int(h["epoch"]) for h in res.history] == [1, 2]
    assert seen == res.history and res.best_epoch == 0


def test_early_stopping_off_runs_every_epoch(data):
    train, valid = data
    res = fit(fresh_net(), train, valid, phase(epochs=3, lr=1e-30, optimizer="sgd"), preproc("resnet18"), AUG)
    assert len(res.history) == 3


def test_grad_clip_bounds_each_sgd_step(data):
    train, valid = data
    start = fresh_net().state_dict()["head.weight"].clone()
    kw = dict(epochs=1, optimizer="sgd", momentum=0.0, lr=1.0, batch_size=8)
    clipped = fit(fresh_net(), train, valid, phase(grad_clip=1e-3, **kw), preproc("resnet18"), AUG).last_state
    free = fit(fresh_net(), train, valid, phase(**kw), preproc("resnet18"), AUG).last_state
    steps = math.ceil(len(train.targets) / 8)
    moved = (clipped["head.weight"] - start).norm()
    assert moved <= steps * 1e-3 * 1.01
    assert (free["head.weight"] - start).norm() > 10 * moved


# ------------------------------------------------------------------ mixup / cutmix / dropout
def test_mixup_is_a_convex_combination():
    ph = phase(mixup_alpha=0.4)
    x = torch.randn(6, 5)
    t = torch.arange(6)
    mx, ta, tb, lam = Mixer(ph, 0)(x, t)
    assert 0 <= lam <= 1 and torch.equal(ta, t)
    perm = tb  # targets are 0..5, so tb is the permutation itself
    assert torch.allclose(mx, lam * x + (1 - lam) * x[perm])


def test_cutmix_pastes_a_rectangle_and_lambda_is_its_complement_area():
    ph = phase(cutmix_alpha=1.0)
    x = torch.zeros(4, 2, 8, 8)
    for i in range(4):
        x[i] = i + 1
    t = torch.arange(4)
    for seed in range(5):
        mx, ta, tb, lam = Mixer(ph, seed)(x, t)
        for i in range(4):
            own = (mx[i] == i + 1).float().mean()
            other = (mx[i] == tb[i] + 1).float().mean()
            if tb[i] != i:
                assert own == pytest.approx(lam) and other == pytest.approx(1 - lam)


def test_mixup_and_dropout_training_is_seeded(data):
    train, valid = data

    def run():
        set_seed(5)
        net = models.build("resnet18", 2, pretrained=False, dropout=0.3)
        ph = phase(epochs=2, mixup_alpha=0.2, cutmix_alpha=1.0, unfreeze_blocks=1, lr=0.001)
        res = fit(net, train, valid, ph, preproc("resnet18"), AUG)
        return res.history, res.last_state

    (h1, s1), (h2, s2) = run(), run()
    assert h1 == h2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(0 <= h["train_acc"] <= 1 for h in h1)


def test_dropout_head_is_identity_in_eval():
    set_seed(0)
    net = models.build("resnet18", 3, pretrained=False, dropout=0.5).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(net(x), net(x))
    net.train()
    feats = torch.ones(4, net.num_features)
    assert (net.dropout(feats) == 0).any()
    assert "dropout" not in " ".join(net.state_dict())  # checkpoints are unchanged by dropout


# ------------------------------------------------------------------ augmentation engines
def _img(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


PLAIN = {"crop_scale_min": 1.0, "rotation": 0, "hflip": 0.0, "color_jitter": 0.0}


def test_batched_vflip_grayscale_erasing():
    x = _img()
    g = torch.Generator().manual_seed(1)
    out = BatchAugment({**PLAIN, "vflip": 1.0}, g)(x)
    # no crop/rotation: only the aspect jitter (<=10%) resamples; a vertical flip puts the bottom row on top
    assert torch.corrcoef(torch.stack([out[:, :, 0].flatten(), x.float()[:, :, -1].flatten() / 255]))[0, 1] > 0.5
    gray = BatchAugment({**PLAIN, "grayscale": 1.0}, g)(x)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    erased = BatchAugment({**PLAIN, "erasing": 1.0}, g)(torch.full((8, 3, SIZE, SIZE), 200, dtype=torch.uint8))
    share = (erased == 0).all(1).float().mean((1, 2))
    assert ((share >= 0.015) & (share <= 0.36)).all()


def test_batched_noise_is_seeded_bounded_per_image_and_free_when_off():
    flat = torch.full((16, 3, SIZE, SIZE), 128, dtype=torch.uint8)  # no crop/rotation/aspect: pixels stay 128
    plain = {**PLAIN, "crop_scale_min": 1.0}
    off = BatchAugment(plain, torch.Generator().manual_seed(3))
    zero = BatchAugment({**plain, "noise": 0.0}, torch.Generator().manual_seed(3))
    assert torch.equal(off(flat), zero(flat)) and torch.equal(off.gen.get_state(), zero.gen.get_state())  # 0 = off
    a = BatchAugment({**plain, "noise": 0.2}, torch.Generator().manual_seed(3))(flat)
    b = BatchAugment({**plain, "noise": 0.2}, torch.Generator().manual_seed(3))(flat)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    std = (a - off(flat)).std((1, 2, 3))  # each image's own noise level, drawn from [0, 0.2]
    assert (std <= 0.2 * 1.1).all() and std.max() - std.min() > 0.05


def test_v2_engine_builds_tutorial_pipelines_and_is_seeded():
    ops = [{"Resize": {"size": 40}}, {"RandomRotation": {"degrees": 45}}, {"CenterCrop": {"size": SIZE}},
           "RandomHorizontalFlip", {"RandomVerticalFlip": {"p": 0.5}}, {"RandomGrayscale": {"p": 0.1}},
           {"ColorJitter": {"brightness": 0.2}}, {"RandomErasing": {"p": 0.5}}]
    a = V2Augment(ops, SIZE, torch.Generator().manual_seed(3))(_img(4))
    b = V2Augment(ops, SIZE, torch.Generator().manual_seed(3))(_img(4))
    c = V2Augment(ops, SIZE, torch.Generator().manual_seed(4))(_img(4))
    assert a.shape == (4, 3, SIZE, SIZE) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    crop = make_augment({"engine": "v2", "v2": [{"RandomCrop": {"size": SIZE, "padding": 4}}]},
                        torch.Generator().manual_seed(0), SIZE)
    assert crop(_img(2)).shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("ops, fragment", [
    ([{"Lambda": {}}], "augment.v2[0] 'Lambda' is not one of"),
    ([{"RandomRotation": {"degres": 4}}], "augment.v2[0] RandomRotation"),
    (["RandomHorizontalFlip", {"CenterCrop": 3}], "augment.v2[1] CenterCrop takes a mapping"),
    ([{"A": {}, "B": {}}], "augment.v2[0] must be an op name or a one-key mapping"),
])
def test_v2_bad_ops_name_the_item(ops, fragment):
    with pytest.raises(PipelineError, match=None) as exc:
        build_v2(ops)
    assert fragment in str(exc.value)


def test_v2_ops_must_end_at_input_size():
    aug = V2Augment([{"Resize": {"size": 40}}], SIZE, torch.Generator().manual_seed(0))
    with pytest.raises(PipelineError, match="must end at model.input_size"):
        aug(_img(1))


def test_fit_with_v2_engine(data):
    train, valid = data
    pp = preproc("resnet18")
    v2 = {"engine": "v2", "v2": [{"RandomCrop": {"size": SIZE, "padding": 4}},
                                                                      "RandomHorizontalFlip"]}
    res = fit(fresh_net(), train, valid, phase(epochs=1, unfreeze_blocks=1, prefix_views=0, lr=1e-3), pp, v2)
    assert len(res.history) == 1


# ------------------------------------------------------------------ resume
class Killed(Exception):
    pass


def _kill_at(epoch: int):
    def hook(rec):
        if rec["epoch"] == epoch:
            raise Killed

    return hook


MODES = {
    "head": dict(epochs=5, feature_views=2, mixup_alpha=0.2),
    "partial": dict(epochs=4, unfreeze_blocks=1, lr=0.001, prefix_views=0, mixup_alpha=0.2, cutmix_alpha=1.0,
                    scheduler="cosine"),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("every", [1, 2])
def test_resumed_phase_ends_with_identical_weights(mode, every, data, tmp_path):
    train, valid = data
    pp = preproc("resnet18")
    ph = phase(**MODES[mode])

    def net():
        set_seed(11)
        return models.build("resnet18", 2, pretrained=False, dropout=0.2)

    ref = fit(net(), train, valid, ph, pp, AUG)
    resume = Resume(tmp_path / "r.pt", every)
    with pytest.raises(Killed):
        fit(net(), train, valid, ph, pp, AUG, hook=_kill_at(3), resume=resume)
    assert resume.path.is_file()
    seen = []
    got = fit(net(), train, valid, ph, pp, AUG, hook=seen.append, resume=resume)
    assert got.history == ref.history and seen == ref.history  # earlier epochs replayed to the hook
    assert got.best_epoch == ref.best_epoch
    for a, b in ((got.last_state, ref.last_state), (got.best_state, ref.best_state)):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # a finished phase's file restores its end state without training again
    again = fit(net(), train, valid, ph, pp, AUG, resume=resume)
    assert again.history == ref.history
    assert all(torch.equal(again.last_state[k], ref.last_state[k]) for k in ref.last_state)


def test_resume_file_of_other_settings_is_ignored(data, tmp_path):
    train, valid = data
    pp = preproc("resnet18")
    resume = Resume(tmp_path / "r.pt")
    with pytest.raises(Killed):
        fit(fresh_net(), train, valid, phase(epochs=4), pp, AUG, hook=_kill_at(2), resume=resume)
    other = phase(epochs=4, lr=0.02)
    seen = []
    res = fit(fresh_net(), train, valid, other, pp, AUG, hook=seen.append, resume=resume)
    ref = fit(fresh_net(), train, valid, other, pp, AUG)
    assert res.history == ref.history == seen


def test_torn_resume_file_is_ignored(data, tmp_path):
    train, valid = data
    path = tmp_path / "r.pt"
    path.write_bytes(b"not a torch file")
    res = fit(fresh_net(), train, valid, phase(epochs=2), preproc("resnet18"), AUG, resume=Resume(path))
    assert len(res.history) == 2
