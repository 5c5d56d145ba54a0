"""Helper of test_distributed: fit() on a tiny two-colour task, as one process or as a torchrun rank.

Usage: python tests/_dist_fit.py OUT_DIR (plain) or under `torchrun ... tests/_dist_fit.py OUT_DIR`; writes
OUT_DIR/rank<r>.pt with each mode's final state, history and best_val_acc."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from tlpipe import models  # noqa: E402
from tlpipe.config.phases import Phase  # noqa: E402
from tlpipe.data.splitdir import Data  # noqa: E402
from tlpipe.inference import Preproc  # noqa: E402
from tlpipe.runtime import set_seed  # noqa: E402
from tlpipe.training import parallel  # noqa: E402
from tlpipe.training.loop import fit  # noqa: E402

AUG = {"crop_scale_min": 0.8, "rotation": 5, "hflip": 0.0, "color_jitter": 0.1}


def colours(n: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[220, 30, 30], [30, 30, 220]], dtype=torch.float32).view(2, 3, 1, 1).expand(2, 3, 32, 32)
    imgs = torch.cat([base[c] + 25 * torch.randn(n, 3, 32, 32, generator=g) for c in (0, 1)])
    return Data(imgs.clamp(0, 255).to(torch.uint8), torch.tensor([0] * n + [1] * n))


def run(kind: str) -> dict:
    set_seed(0)
    net = models.build("resnet18", 2, pretrained=False)
    ph = Phase(epochs=4, batch_size=7, optimizer="adam", lr=0.01, weight_decay=0.0, momentum=0.9,
               label_smoothing=0.0, scheduler="none", step_size=2, gamma=0.5, feature_views=2, grad_clip=1.0,
               unfreeze_blocks=0 if kind == "head" else 1, prefix_views={"head": 0, "cached": 2, "fresh": 0}[kind])
    sp = models.spec("resnet18")
    res = fit(net, colours(12, 0), colours(5, 1), ph, Preproc(sp.mean, sp.std, 32, torch.device("cpu")), AUG)
    return {"state": res.last_state, "history": res.history, "best_val_acc": res.best_val_acc}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    with parallel.group(torch.device("cpu")):
        results = {kind: run(kind) for kind in ("head", "cached", "fresh")}
        results["world"] = parallel.world()
    torch.save(results, out / f"rank{os.environ.get('RANK', '0')}.pt")
