"""train.precision: bf16 autocast trains on the CPU, fp16 is refused there; on CUDA (skipped elsewhere) bf16 and
fp16 (GradScaler) train, cached features stay on the GPU and images travel through pinned memory."""

from __future__ import annotations

import pytest
import torch

from tlpipe import models
from tlpipe.config.phases import Phase
from tlpipe.data.splitdir import Data
from tlpipe.errors import PipelineError
from tlpipe.inference import Preproc, run_groups, to_device
from tlpipe.runtime import set_seed
from tlpipe.training import parallel
from tlpipe.training.loop import HeadMode, fit

AUG = {"crop_scale_min": 0.8, "rotation": 5, "hflip": 0.0, "color_jitter": 0.1}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def colours(n: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[220, 30, 30], [30, 30, 220]], dtype=torch.float32).view(2, 3, 1, 1).expand(2, 3, 32, 32)
    imgs = torch.cat([base[c] + 25 * torch.randn(n, 3, 32, 32, generator=g) for c in (0, 1)])
    return Data(imgs.clamp(0, 255).to(torch.uint8), torch.tensor([0] * n + [1] * n))


def phase(**kw) -> Phase:
    base = dict(epochs=3, batch_size=8, optimizer="adam", lr=0.01, weight_decay=0.0, momentum=0.9,
                label_smoothing=0.0, scheduler="none", step_size=2, gamma=0.5, feature_views=2)
    return Phase(**{**base, **kw})


def run(precision: str, device: str, **kw):
    set_seed(0)
    net = models.build("resnet18", 2, pretrained=False)
    sp = models.spec("resnet18")
    prep = Preproc(sp.mean, sp.std, 32, torch.device(device), True, 16)
    return net, fit(net, colours(10, 0), colours(4, 1), phase(**kw), prep, AUG, precision=precision)


@pytest.mark.parametrize("kw", [{}, {"unfreeze_blocks": 1, "prefix_views": 2}, {"unfreeze_blocks": 1}],
                         ids=["head", "partial-cached", "partial-fresh"])
def test_bf16_autocast_trains_on_cpu(kw):
    net, res = run("bf16", "cpu", **kw)
    assert res.best_val_acc == 1.0, res.history
    assert all(v.dtype in (torch.float32, torch.int64) for v in res.best_state.values())  # weights stay fp32
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_fp16_on_cpu_is_refused():
    with pytest.raises(PipelineError, match="fp16 needs a CUDA device"):
        run("fp16", "cpu")
    parallel.check_precision("bf16", torch.device("cpu"))  # bf16 and fp32 are fine on the CPU


def test_fp32_is_a_no_op():
    amp = parallel.Amp("fp32", torch.device("cpu"))
    assert amp.scaler is None and amp.dtype is None
    with amp.autocast():
        assert not torch.is_autocast_enabled("cpu")
    x = torch.zeros(3)
    assert to_device(x, torch.device("cpu")) is x


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kw", [{}, {"unfreeze_blocks": 1, "prefix_views": 2}, {"unfreeze_blocks": 1, "grad_clip": 1.0}],
                         ids=["head", "partial-cached", "partial-fresh"])
def test_cuda_precisions_train(precision, kw):
    net, res = run(precision, "cuda", **kw)
    assert res.best_val_acc == 1.0, res.history
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in net.parameters())


@CUDA
def test_cuda_cached_features_stay_on_the_device_and_images_are_pinned():
    set_seed(0)
    net = models.build("resnet18", 2, pretrained=False).cuda()
    sp = models.spec("resnet18")
    prep = Preproc(sp.mean, sp.std, 32, torch.device("cuda"), True, 16)
    mode = HeadMode(net, phase())
    mode.build(colours(6, 0), colours(2, 1), prep, lambda x: x)
    assert mode.feats.device.type == "cuda" and mode.vfeats.device.type == "cuda"
    assert run_groups(net, colours(3, 2).images, prep, 2).device.type == "cuda"
    x = to_device(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.device("cuda"))
    assert x.device.type == "cuda"
    amp = parallel.Amp("fp16", torch.device("cuda"))
    assert amp.scaler is not None
