"""training.py: head and partial fine-tuning learn an easy task, keep best/last states, are seeded, and the
cached-feature path computes what the plain forward pass computes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tlpipe import models
from tlpipe.data.transforms import normalize
from tlpipe.config.phases import Phase
from tlpipe.data.splitdir import Data
from tlpipe.inference import Preproc, predict_logits, run_groups
from tlpipe.runtime import set_seed
from tlpipe.training.loop import FitResult, better, fit

SIZE = 32
AUG = {"crop_scale_min": 0.8, "rotation": 5, "hflip": 0.0, "color_jitter": 0.1}
COLOURS = [(220, 30, 30), (30, 30, 220)]  # class 0 red, class 1 blue


@pytest.fixture(autouse=True)
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def solid_colour_data(n_per_class: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    imgs, targets = [], []
    for label, rgb in enumerate(COLOURS):
        base = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, SIZE, SIZE)
        for _ in range(n_per_class):
            noisy = base + 25 * torch.randn(3, SIZE, SIZE, generator=g)
            imgs.append(noisy.clamp(0, 255).to(torch.uint8))
            targets.append(label)
    return Data(torch.stack(imgs), torch.tensor(targets, dtype=torch.long))


@pytest.fixture(scope="module")
def data():
    return solid_colour_data(12, seed=0), solid_colour_data(4, seed=1)


def preproc(backbone: str) -> Preproc:
    sp = models.spec(backbone)
    return Preproc(sp.mean, sp.std, SIZE, torch.device("cpu"))


def phase(**kw) -> Phase:
    base = dict(epochs=6, batch_size=8, optimizer="adam", lr=0.01, weight_decay=0.0, momentum=0.9,
                label_smoothing=0.0, scheduler="none", step_size=2, gamma=0.5)
    return Phase(**{**base, **kw})


def fresh_net(backbone: str = "resnet18", seed: int = 0) -> models.Net:
    set_seed(seed)
    return models.build(backbone, 2, pretrained=False)


def accuracy(net, d: Data, pp: Preproc) -> float:
    logits = predict_logits(net, d.images, replace(pp, batch=16))
    return float((logits.argmax(1) == d.targets).float().mean())


def check_result(res, net, ph: Phase, valid: Data, pp: Preproc) -> None:
    assert [int(h["epoch"]) for h in res.history] == list(range(1, ph.epochs + 1))
    for h in res.history:
        assert set(h) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"}
    assert set(res.initial) == {"val_loss", "val_acc"}
    # the kept state is the best epoch (or the starting weights, epoch 0)
    best = max([res.initial["val_acc"]] + [h["val_acc"] for h in res.history])
    assert res.best_val_acc == best
    if res.best_epoch:
        assert res.history[res.best_epoch - 1]["val_acc"] == res.best_val_acc
    # last_state is the state at the end of training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in res.last_state.items())
    # loading best_state reproduces the recorded validation accuracy
    net.load_state_dict(res.best_state)
    assert accuracy(net, valid, pp) == pytest.approx(res.best_val_acc)


# ------------------------------------------------------------------ head mode
def test_head_mode_learns_and_keeps_backbone_frozen(data):
    train, valid = data
    pp = preproc("resnet18")
    net = fresh_net()
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    ph = phase(epochs=10, feature_views=2)
    seen = []
    res = fit(net, train, valid, ph, pp, AUG, hook=seen.append)
    assert seen == res.history
    assert res.best_val_acc == 1.0
    assert res.history[-1]["train_acc"] >= 0.9
    check_result(res, net, ph, valid, pp)
    after = net.state_dict()
    # backbone weights and BatchNorm statistics untouched; the head changed
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not torch.equal(res.last_state["head.weight"], fresh_net().state_dict()["head.weight"])


def test_head_mode_scheduler_lr_recorded(data):
    train, valid = data
    pp = preproc("resnet18")
    ph = phase(epochs=4, optimizer="sgd", scheduler="step", step_size=2, gamma=0.5, lr=0.01)
    res = fit(fresh_net(), train, valid, ph, pp, AUG)
    assert [h["lr"] for h in res.history] == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_best_state_is_a_snapshot_of_the_best_epoch(data):
    """After epoch 1 the hook flips the head (predictions inverted) and the lr drops 1000x, so later
    epochs are worse: the kept state must be epoch 1's weights, not the live ones."""
    train, valid = data
    pp = preproc("resnet18")
    net = fresh_net()
    snapshots = {}

    def hook(rec):
        snapshots[int(rec["epoch"])] = {k: v.clone() for k, v in net.state_dict().items()}
        if rec["epoch"] == 1:
            with torch.no_grad():
                net.head.weight.mul_(-1)
                net.head.bias.mul_(-1)

    ph = phase(epochs=3, lr=0.01, scheduler="step", step_size=1, gamma=0.001)
    res = fit(net, train, valid, ph, pp, AUG, hook=hook)
    assert res.history[0]["val_acc"] == 1.0 and res.history[-1]["val_acc"] < 0.5
    assert res.best_epoch == 1 and res.best_val_acc == 1.0
    assert all(torch.equal(v, snapshots[1][k]) for k, v in res.best_state.items())
    assert all(torch.equal(v, snapshots[3][k]) for k, v in res.last_state.items())
    assert not torch.equal(res.best_state["head.weight"], res.last_state["head.weight"])


def test_no_epoch_better_than_start_keeps_starting_weights(data):
    train, valid = data
    pp = preproc("resnet18")
    net = fresh_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    # validation labels inverted: learning the training task only makes validation worse
    flipped = Data(valid.images, 1 - valid.targets)
    res = fit(net, train, flipped, phase(epochs=3), pp, AUG)
    assert all(h["val_acc"] <= res.initial["val_acc"] for h in res.history)
    assert res.best_epoch == 0 and res.best_val_acc == res.initial["val_acc"]
    assert all(torch.equal(v, start[k]) for k, v in res.best_state.items())


def test_keep_rules_differ_where_accuracy_and_loss_disagree():
    best = FitResult(best_val_acc=0.994, best_val_loss=0.437)  # a head epoch: 2 images more right on validation
    finetuned = (0.992, 0.410)  # a fine-tuned epoch: 2 images fewer right, far lower loss
    assert not better(*finetuned, best) and not better(*finetuned, best, "val_acc")
    assert better(*finetuned, best, "val_loss")
    assert better(0.994, 0.436, best) and better(0.994, 0.436, best, "val_loss")  # equal accuracy: the loss decides
    assert not better(0.996, 0.438, best, "val_loss") and better(0.996, 0.438, best)


def test_fit_keeps_by_the_phase_keep_rule(data, monkeypatch):
    from tlpipe.training import loop

    seen = []
    def spy(acc: float, loss: float, than: FitResult, by: str = "val_acc") -> bool:
        seen.append(by)
        return better(acc, loss, than, by)

    monkeypatch.setattr(loop, "better", spy)
    train, valid = data
    res = fit(fresh_net(), train, valid, phase(epochs=2, keep="val_loss"), preproc("resnet18"), AUG)
    assert seen == ["val_loss", "val_loss"]
    history = [res.initial] + res.history
    assert res.best_epoch == min(range(3), key=lambda e: history[e]["val_loss"])  # the lowest, first on a tie


# ------------------------------------------------------------------ partial mode
def test_partial_mode_learns_trains_only_top_groups(data):
    train, valid = data
    pp = preproc("resnet18")
    net = fresh_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ph = phase(epochs=3, lr=0.001, unfreeze_blocks=1, bn_train=False)
    res = fit(net, train, valid, ph, pp, AUG)
    assert res.best_val_acc == 1.0
    check_result(res, net, ph, valid, pp)
    last = res.last_state
    # groups[0..3] (stem, layer1..3) unchanged; layer4 weights and the head trained
    frozen = [k for k in start if k.split(".")[:2] in (["groups", "0"], ["groups", "1"], ["groups", "2"],
                                                        ["groups", "3"])]
    assert frozen and all(torch.equal(start[k], last[k]) for k in frozen)
    assert not torch.equal(start["groups.4.0.conv1.weight"], last["groups.4.0.conv1.weight"])
    assert not torch.equal(start["head.weight"], last["head.weight"])
    # bn_train false: BatchNorm statistics of the unfrozen group are kept
    assert torch.equal(start["groups.4.0.bn1.running_mean"], last["groups.4.0.bn1.running_mean"])
    assert torch.equal(start["groups.4.0.bn1.num_batches_tracked"], last["groups.4.0.bn1.num_batches_tracked"])


def test_partial_mode_bn_train_updates_statistics_of_unfrozen_groups_only(data):
    train, valid = data
    pp = preproc("resnet18")
    net = fresh_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    res = fit(net, train, valid, phase(epochs=1, lr=0.001, unfreeze_blocks=1, bn_train=True), pp, AUG)
    last = res.last_state
    assert not torch.equal(start["groups.4.0.bn1.running_mean"], last["groups.4.0.bn1.running_mean"])
    assert torch.equal(start["groups.3.0.bn1.running_mean"], last["groups.3.0.bn1.running_mean"])


def test_partial_mode_on_efficientnet_lite0(data):
    train, valid = data
    pp = preproc("efficientnet_lite0")
    net = fresh_net("efficientnet_lite0")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ph = phase(epochs=2, lr=0.001, unfreeze_blocks=2, optimizer="adamw", scheduler="cosine")
    res = fit(net, train, valid, ph, pp, AUG)
    check_result(res, net, ph, valid, pp)
    assert res.best_val_acc == 1.0
    changed = {k.split(".")[1] for k in start if k.startswith("groups.") and not torch.equal(start[k], res.last_state[k])}
    assert changed == {"7", "8"}  # only the top two of nine groups trained


# ------------------------------------------------------------------ determinism
def _run(mode: str, data) -> tuple[dict, dict, list]:
    train, valid = data
    pp = preproc("resnet18")
    net = fresh_net(seed=3)
    ph = phase(epochs=2, feature_views=2) if mode == "head" else phase(epochs=1, lr=0.001, unfreeze_blocks=1)
    res = fit(net, train, valid, ph, pp, AUG)
    return res.best_state, res.last_state, res.history


@pytest.mark.parametrize("mode", ["head", "partial"])
def test_same_seed_gives_bit_identical_results(mode, data):
    best1, last1, hist1 = _run(mode, data)
    best2, last2, hist2 = _run(mode, data)
    assert hist1 == hist2
    assert set(best1) == set(best2) and set(last1) == set(last2)
    assert all(torch.equal(best1[k], best2[k]) for k in best1)
    assert all(torch.equal(last1[k], last2[k]) for k in last1)


def test_different_seed_differs(data):
    train, valid = data
    pp = preproc("resnet18")
    heads = []
    for seed in (1, 2):
        res = fit(fresh_net(seed=seed), train, valid, phase(epochs=1), pp, AUG)
        heads.append(res.last_state["head.weight"])
    assert not torch.equal(heads[0], heads[1])


# ------------------------------------------------------------------ cached features == plain forward
@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_cached_features_match_full_forward(backbone, data):
    train, _ = data
    pp = preproc(backbone)
    net = fresh_net(backbone).eval()
    images = train.images[:10]
    with torch.no_grad():
        plain = net(normalize(images, pp.mean, pp.std))
    feats = run_groups(net, images, replace(pp, batch=3), None)  # odd batch size on purpose
    assert feats.shape == (10, net.num_features)
    with torch.no_grad():
        cached = net.head(feats)
    assert torch.allclose(cached, plain, atol=1e-5, rtol=1e-4)
    assert torch.allclose(predict_logits(net, images, replace(pp, batch=4)), plain, atol=1e-5, rtol=1e-4)
    # frozen prefix cached, suffix run later (the partial fine-tuning path)
    first = models.freeze(net, 2)
    prefix = run_groups(net, images, replace(pp, batch=4), first)
    with torch.no_grad():
        suffix = net.head(net.pool(net.forward_groups(prefix, first, None)))
    assert torch.allclose(suffix, plain, atol=1e-5, rtol=1e-4)


def test_run_groups_is_eval_mode_and_no_grad(data):
    train, _ = data
    pp = preproc("resnet18")
    net = fresh_net()
    net.train()
    bn_before = net.groups[0][1].running_mean.clone()
    feats = run_groups(net, train.images[:4], replace(pp, batch=2), None)
    assert not feats.requires_grad
    assert torch.equal(net.groups[0][1].running_mean, bn_before)


def test_phase_from_params_reads_repo_sections():
    from tlpipe.config import params as P

    p = P.load(P.Path(__file__).resolve().parents[1] / "params.yaml")
    head = Phase.from_params(p, "train_head")
    tune = Phase.from_params(p, "finetune")
    assert head.unfreeze_blocks == 0 and head.feature_views == p["train_head"]["feature_views"]
    assert head.lr == p["train"]["lr"] and head.optimizer == p["train"]["optimizer"]
    assert tune.unfreeze_blocks == p["finetune"]["unfreeze_blocks"]
    assert tune.lr == pytest.approx(p["train"]["lr"] * p["finetune"]["lr_scale"])
    assert Phase.from_params(p, "retrain.finetune").bn_train == p["retrain"]["finetune"]["bn_train"]


def test_head_then_partial_phase_reuse_the_plain_prefix(data, monkeypatch):
    """retrain's head phase leaves the frozen prefix of the plain images to its fine-tuning phase: the same
    activations (so the same training, up to float rounding: the head's features then come through the
    unfolded top groups), one pass fewer over train and over valid."""
    from tlpipe.training import loop
    from tlpipe.training.loop import memo_for

    train, valid = data
    pp = preproc("efficientnet_lite0")
    head, tune = phase(epochs=1), phase(epochs=1, lr=0.001, unfreeze_blocks=2, prefix_views=2)
    memos = memo_for([head, tune], 9)
    assert memos[0] is memos[1] and memos[0].tap == 7 and memo_for([head, replace(tune, prefix_views=0)], 9) == [None] * 2

    calls = []
    real = loop.run_groups
    monkeypatch.setattr(loop, "run_groups", lambda net, images, p, stop, tf=None, desc="": (
        calls.append((stop, tf is None)), real(net, images, p, stop, tf, desc))[1])
    histories = []
    for shared in (True, False):
        calls.clear()
        net = fresh_net("efficientnet_lite0", seed=5)
        ms = memo_for([head, tune], len(net.groups)) if shared else [None, None]
        fit(net, train, valid, head, pp, AUG, memo=ms[0])
        if shared:
            kept = ms[1].get("train", net, 7)
            torch.testing.assert_close(kept, run_groups(net, train.images, pp, 7))
        histories.append(fit(net, train, valid, tune, pp, AUG, memo=ms[1]).history)
        if shared:  # head: prefix of train and valid; fine-tuning: only the augmented view
            assert calls == [(7, True), (7, True), (7, False)]
        else:
            assert calls == [(None, True), (None, True), (7, True), (7, True), (7, False)]
    assert [pytest.approx(h, rel=1e-5) for h in histories[0]] == histories[1]


def test_prefix_memo_is_not_used_after_the_prefix_changed(data):
    from tlpipe.training.loop import PrefixMemo

    train, _ = data
    pp = preproc("efficientnet_lite0")
    net = fresh_net("efficientnet_lite0", seed=5)
    memo = PrefixMemo(7)
    memo.put("train", net, run_groups(net, train.images, pp, 7))
    assert memo.get("train", net, 7) is not None and memo.get("train", net, 6) is None
    with torch.no_grad():
        net.groups[2][0].conv_pw.weight.add_(0.01)
    assert memo.get("train", net, 7) is None
