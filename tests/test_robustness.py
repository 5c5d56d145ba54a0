"""The robustness report: seeded corruptions (shape, dtype, range, determinism, severity order), errors, report()."""

from __future__ import annotations

import pytest
import torch
import yaml

from _support import REPO

from tlpipe import models
from tlpipe.config import params as P
from tlpipe.errors import PipelineError
from tlpipe.evaluation import robustness as R
from tlpipe.evaluation.robustness_stage import subset, write_csv
from tlpipe.inference import Preproc


def _images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colourful images with edges (blobs upsampled from 6x6), so every corruption changes them."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x[:, :, size // 3 : size // 2, :] = 0.9  # a bright bar: something for rotation and blur to move
    return (x * 200 + 25).round().to(torch.uint8)


@pytest.mark.parametrize("name", list(R.CORRUPTIONS))
def test_corruption_shape_dtype_range_and_determinism(name):
    x = _images()
    for s in R.SEVERITIES:
        a, b = R.corrupt(x, name, s, seed=3), R.corrupt(x, name, s, seed=3)
        assert a.shape == x.shape and a.dtype == torch.uint8, (name, s)
        assert int(a.min()) >= 0 and int(a.max()) <= 255
        assert torch.equal(a, b), (name, s)
        assert not torch.equal(a, x), (name, s)  # it does change the images
    assert torch.equal(x, _images())  # the input is left as it was


@pytest.mark.parametrize("name", list(R.CORRUPTIONS))
def test_severity_grows_the_distortion(name):
    x = _images(n=8)
    diff = [(R.corrupt(x, name, s, seed=1).float() - x.float()).abs().mean().item() for s in R.SEVERITIES]
    assert diff[0] < diff[1] < diff[2], (name, diff)


@pytest.mark.parametrize("name", list(R.CORRUPTIONS))
def test_odd_sizes_and_single_image(name):
    x = _images(n=1, size=20)[:, :, :, :17].contiguous()  # 20 x 17, one image
    assert R.corrupt(x, name, 3, seed=0).shape == x.shape


def test_random_corruptions_depend_on_the_seed():
    x = _images()
    for name in ("noise", "motion_blur"):
        assert not torch.equal(R.corrupt(x, name, 2, seed=1), R.corrupt(x, name, 2, seed=2)), name


def test_warm_overexposure_warms_brightens_and_clips():
    """Red up, blue down, all brighter: mid-grey turns orange-ish, and a white or red sign face clips to 255."""
    grey = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    r, g, b = (int(c) for c in R.corrupt(grey, "warm_overexposure", 1, seed=0)[0, :, 0, 0])
    assert (r, g, b) == (172, 150, 128)  # 100 x (1.15, 1, 0.85) x 1.5 = (172.5, 150, 127.5), rounded half to even
    red_sign = torch.tensor([200, 40, 40], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    out = R.corrupt(red_sign, "warm_overexposure", 3, seed=0)[0, :, 0, 0].tolist()
    assert out == [255, 100, 55]  # red clipped; blue 40 x 0.55 x 2.5: the sign washes out towards pink-white


@pytest.mark.parametrize("severity", [0, 4, -1])
def test_bad_severity_is_an_error(severity):
    with pytest.raises(PipelineError, match="severity"):
        R.corrupt(_images(), "noise", severity, seed=0)


def test_unknown_name_lists_valid_names():
    with pytest.raises(PipelineError, match="unknown corruption 'fog'.*white_balance.*rotation"):
        R.corrupt(_images(), "fog", 1, seed=0)


def test_params_names_match_the_table():
    assert tuple(R.CORRUPTIONS) == P.CORRUPTIONS
    section = yaml.safe_load((REPO / "params.yaml").read_text())["robustness"]
    P._validate(section, P.SCHEMA["robustness"], "robustness.")
    assert section["corruptions"] == list(P.CORRUPTIONS)  # the default runs them all


@pytest.mark.parametrize("value, fragment", [(["hue", "fog"], "unknown 'fog'"), ([], "empty"),
                                             (["hue", "hue"], "twice"), ("hue", "must be list")])
def test_params_refuse_bad_corruption_lists(value, fragment):
    with pytest.raises(PipelineError, match="robustness.corruptions") as exc:
        P._validate({"corruptions": value}, P.SCHEMA["robustness"], "robustness.")
    assert fragment in str(exc.value)
    if fragment.startswith("unknown"):
        assert all(n in str(exc.value) for n in P.CORRUPTIONS)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = models.build("resnet18", 2, pretrained=False)
    pp = Preproc((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32, torch.device("cpu"), channels_last=False, batch=5)
    x = _images(n=12)
    return net, x, torch.arange(12) % 2, pp


def test_report_structure_and_bounds(tiny, tmp_path):
    net, x, y, pp = tiny
    out = R.report(net, x, y, pp, seed=0, names=["noise", "jpeg", "rotation"])
    assert set(out) == {"clean", "corruptions", "mean", "worst", "errors"}
    assert list(out["corruptions"]) == ["noise", "jpeg", "rotation"] and list(out["errors"]) == list(out["corruptions"])
    for row in out["corruptions"].values():
        assert set(row) == {"1", "2", "3", "mean"} and all(0 <= v <= 1 for v in row.values())
        assert row["mean"] == pytest.approx(sum(row[s] for s in "123") / 3, abs=1e-6)
    for name, row in out["corruptions"].items():  # each pass's confusions count exactly its wrong images
        for s in "123":
            counts = [int(e.rsplit(" ", 1)[1]) for e in out["errors"][name][s]]
            assert sum(counts) == round((1 - row[s]) * len(y)) and counts == sorted(counts, reverse=True)
    w = out["worst"]
    assert out["corruptions"][w["corruption"]][str(w["severity"])] == w["accuracy"]
    assert w["commonest_error"] == out["errors"][w["corruption"]][str(w["severity"])][0]
    assert w["accuracy"] <= out["mean"] <= 1 and 0 <= out["clean"] <= 1
    assert all(v == round(v, 6) for row in out["corruptions"].values() for v in row.values())
    assert R.report(net, x, y, pp, seed=0, names=["noise", "jpeg", "rotation"]) == out  # seeded: same numbers
    write_csv(tmp_path / "r.csv", out)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "corruption,severity,accuracy,case" and len(lines) == 1 + 9
    assert lines[1].startswith("noise,1,") and lines[1].endswith(",noise s1")


def test_confusions_name_count_and_order():
    targets, pred = torch.tensor([0, 0, 1, 1, 1, 2, 2]), torch.tensor([1, 1, 1, 2, 0, 2, 0])
    assert R.confusions(targets, pred, ["stop", "no_entry", "yield"]) == \
        ["stop->no_entry 2", "no_entry->stop 1", "no_entry->yield 1", "yield->stop 1"]
    assert R.confusions(targets, pred)[0] == "0->1 2" and R.confusions(targets, targets) == []


def test_report_of_no_images_is_empty_not_an_error(tiny):
    net, _, _, pp = tiny
    out = R.report(net, torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), pp, seed=0,
                   names=["noise"], clean=0.0)
    assert out["corruptions"]["noise"]["1"] == 0.0 and out["errors"]["noise"]["1"] == []


def test_report_accuracy_is_exact(tiny):
    """The batched accuracy equals one full pass, and a net that always answers the target scores 1."""
    net, x, y, pp = tiny
    with torch.no_grad():
        pred = net.eval().head(net.features((x.float() / 255 - 0.5) / 0.25)).argmax(1)
    assert R.accuracy(net, x, y, pp) == round(float((pred == y).float().mean()), 6)
    assert R.accuracy(net, x, pred, pp) == 1.0


def test_subset_is_seeded_ordered_and_optional():
    assert subset(0, 10, seed=1).tolist() == list(range(10)) and subset(50, 10, seed=1).tolist() == list(range(10))
    idx = subset(4, 10, seed=1)
    assert len(idx) == 4 and idx.tolist() == sorted(idx.tolist()) and len(set(idx.tolist())) == 4
    assert torch.equal(subset(4, 10, seed=1), idx) and not torch.equal(subset(4, 10, seed=2), idx)


def test_report_takes_the_callers_clean_accuracy(tiny):
    """evaluate passes the clean accuracy of its own logits: no second clean pass, the same corrupted rows."""
    net, x, y, pp = tiny
    scored = R.report(net, x, y, pp, seed=0, names=["noise"])
    given = R.report(net, x, y, pp, seed=0, names=["noise"], clean=0.125)
    assert given["clean"] == 0.125 and given["corruptions"] == scored["corruptions"]
