"""checkpoint.py: save/restore roundtrip; missing, foreign, mismatched and malicious files are refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tlpipe import checkpoint, models
from tlpipe.errors import PipelineError

CLASSES = ["zero", "one", "two"]


def _meta(backbone: str, classes=CLASSES) -> dict:
    return {"backbone": backbone, "classes": list(classes), "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "epoch": 3}


@pytest.fixture(scope="module")
def trained_resnet():
    """A resnet18 whose weights and BatchNorm statistics differ from a fresh build."""
    torch.manual_seed(7)
    net = models.build("resnet18", len(CLASSES), pretrained=False)
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32) * 3 + 1)  # moves running stats away from the defaults
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net.eval()


def test_roundtrip_gives_identical_logits(tmp_path, trained_resnet):
    path = tmp_path / "models" / "head.pt"
    meta = _meta("resnet18")
    checkpoint.save(path, trained_resnet, meta)
    assert [p.name for p in path.parent.iterdir()] == ["head.pt"]  # no temp files left
    net, got_meta = checkpoint.restore(path, backbone="resnet18")
    assert got_meta == meta
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), trained_resnet(x))
    assert net.head.out_features == len(CLASSES)


def test_roundtrip_without_backbone_check(tmp_path):
    torch.manual_seed(1)
    net = models.build("efficientnet_lite0", 4, pretrained=False).eval()
    path = tmp_path / "lite.pt"
    checkpoint.save(path, net, _meta("efficientnet_lite0", ["a", "b", "c", "d"]))
    again, meta = checkpoint.restore(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net(x))
    assert meta["classes"] == ["a", "b", "c", "d"]


def test_save_is_detached_copy(tmp_path, trained_resnet):
    path = tmp_path / "c.pt"
    checkpoint.save(path, trained_resnet, _meta("resnet18"))
    ckpt = checkpoint.load(path)
    assert ckpt["format"] == checkpoint.FORMAT
    assert set(ckpt["state_dict"]) == set(trained_resnet.state_dict())
    assert all(not v.requires_grad for v in ckpt["state_dict"].values())


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(PipelineError) as info:
        checkpoint.restore(missing)
    assert "not found" in str(info.value) and str(missing) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04garbage"])
def test_non_checkpoint_bytes(tmp_path, content):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(PipelineError) as info:
        checkpoint.load(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("obj", [{"state_dict": {}}, torch.zeros(3), [1, 2, 3], {"format": "other-v2"}])
def test_torch_file_without_marker(tmp_path, obj):
    f = tmp_path / "foreign.pt"
    torch.save(obj, f)
    with pytest.raises(PipelineError) as info:
        checkpoint.load(f)
    assert "not a tlpipe checkpoint" in str(info.value) and str(f) in str(info.value)


def test_plain_torchvision_weights_refused(tmp_path, trained_resnet):
    f = tmp_path / "resnet18.pth"
    torch.save(trained_resnet.state_dict(), f)
    with pytest.raises(PipelineError, match="not a tlpipe checkpoint"):
        checkpoint.restore(f)


def test_checkpoint_for_other_backbone(tmp_path, trained_resnet):
    path = tmp_path / "resnet.pt"
    checkpoint.save(path, trained_resnet, _meta("resnet18"))
    with pytest.raises(PipelineError) as info:
        checkpoint.restore(path, backbone="efficientnet_lite0")
    msg = str(info.value)
    assert "'resnet18'" in msg and "'efficientnet_lite0'" in msg and str(path) in msg


def test_weights_that_do_not_fit_the_backbone(tmp_path, trained_resnet):
    path = tmp_path / "lying.pt"
    checkpoint.save(path, trained_resnet, _meta("efficientnet_lite0"))  # meta claims another backbone
    with pytest.raises(PipelineError) as info:
        checkpoint.restore(path)
    assert "do not fit efficientnet_lite0" in str(info.value)


def test_class_count_mismatch_is_refused(tmp_path, trained_resnet):
    path = tmp_path / "k.pt"
    checkpoint.save(path, trained_resnet, _meta("resnet18", ["a", "b", "c", "unknown"]))  # head has 3 rows
    with pytest.raises(PipelineError, match="do not fit"):
        checkpoint.restore(path)


# ------------------------------------------------------------------ malicious pickles
class _SystemPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpenPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", [_SystemPayload, _OpenPayload])
def test_malicious_torch_checkpoint_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "state_dict": {}, "meta": payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(PipelineError) as info:
        checkpoint.restore(evil)
    assert str(evil) in str(info.value)
    assert not marker.exists()


def test_malicious_raw_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "meta": _OpenPayload(marker)}, protocol=2))
    with pytest.raises(PipelineError):
        checkpoint.load(evil)
    assert not marker.exists()


def test_payload_is_live_when_loaded_unsafely(tmp_path):
    """Control: the same file does run code under an unsafe load, so the refusal above is meaningful."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"meta": _OpenPayload(marker)}, evil)
    obj = torch.load(evil, weights_only=False)
    obj["meta"].close()
    assert marker.exists()


def test_same_weights_give_byte_identical_files(tmp_path, trained_resnet):
    """The temp file's (random) name must not leak into the bytes, or DVC sees a new model every run."""
    checkpoint.save(tmp_path / "a.pt", trained_resnet, _meta("resnet18"))
    checkpoint.save(tmp_path / "much_longer_name.pt", trained_resnet, _meta("resnet18"))
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "much_longer_name.pt").read_bytes()
