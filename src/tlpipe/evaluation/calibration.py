"""Calibration: expected calibration error and temperature scaling fitted on validation."""

from __future__ import annotations

import torch


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 200) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (optimised in log T, deterministic)."""
    logits, targets = logits.detach().double(), targets.detach()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0).item())


def bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per equal-width confidence bin."""
    conf, pred = probs.max(1)
    correct = (pred == targets).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        n = int(mask.sum())
        out.append((float(conf[mask].double().mean()) if n else 0.0, float(correct[mask].mean()) if n else 0.0, n))
    return out


def ece(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: count-weighted |accuracy - confidence| over confidence bins."""
    total = len(targets)
    return float(sum(n / total * abs(acc - conf) for conf, acc, n in bins(probs, targets, n_bins) if n))
