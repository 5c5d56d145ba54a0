"""Calibration: expected calibration error, temperature scaling fitted on validation, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .atomic import atomic_path  # noqa: E402


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


def reliability_png(path: str | Path, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                    title: str, n_bins: int = 15) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for t, label, marker in ((1.0, "raw", "o"), (temperature, f"T = {temperature:.2f}", "s")):
        probs = torch.softmax(logits / t, 1)
        pts = [(c, a) for c, a, n in bins(probs, targets, n_bins) if n]
        xs, ys = zip(*pts) if pts else ((), ())
        ax.plot(xs, ys, marker=marker, label=f"{label} (ECE {100 * ece(probs, targets, n_bins):.2f}%)")
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


