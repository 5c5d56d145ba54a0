"""Mixed precision and several processes (torchrun) for the training loop.

Precision (train.precision): fp32 runs the loop exactly as without this module; bf16 and fp16 wrap the forward
passes (feature/prefix caching, training steps, validation) in torch.autocast, and fp16 steps through a
GradScaler. fp16 needs CUDA: on the CPU it is refused (PipelineError) rather than silently run as something else.

Processes (train.distributed): a plain stage process re-executes its own command line under
`python -m torch.distributed.run --standalone --nproc_per_node <train.nproc_per_node>` (`relaunch`); a torchrun
child joins the process group (gloo on the CPU, nccl on CUDA, one GPU per local rank). Every rank seeds alike,
computes the same cached features / prefix activations for the whole training set and validates on the whole
validation split (so every rank takes the same decisions); each global batch of the seeded permutation is split
across ranks (`shard`), each rank's loss is weighted by its share of the batch and the gradients are summed
over ranks (`all_reduce_grads`), so a step is the single-process step of the whole batch. Only rank 0 writes
outputs, resume files and the MLflow run (`is_main`, `stage_run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .. import tracking
from ..errors import PipelineError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError(f"params: train.precision fp16 needs a CUDA device (autocast fp16 with a GradScaler), "
                            f"not {device}; use bf16 or fp32 there")


class Amp:
    """Autocast and (fp16) gradient scaling of one phase; fp32 is a no-op on every call."""

    def __init__(self, precision: str = "fp32", device: torch.device = torch.device("cpu")):
        check_precision(precision, device)
        self.precision, self.device, self.dtype = precision, device, DTYPES[precision]
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        return nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer, params: list[nn.Parameter], clip: float) -> None:
        """Clip (after unscaling) and step; with a scaler a step whose gradients overflowed is skipped."""
        if self.scaler is not None and clip > 0:
            self.scaler.unscale_(opt)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main() -> bool:
    """Rank 0, or not distributed (read from torchrun's environment: true before and after the group exists)."""
    return os.environ.get("RANK", "0") == "0"


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard() -> slice:
    """This rank's part of a global batch (all of it in one process)."""
    n = world()
    return slice(None) if n == 1 else slice(dist.get_rank(), None, n)


def relaunch(params: dict[str, Any]) -> None:
    """train.distributed in a plain process: run this very command under torchrun, then exit (never returns)."""
    if not params["train"]["distributed"] or under_torchrun():
        return
    n = int(params["train"]["nproc_per_node"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *sys.argv]
    print(f"train.distributed: {' '.join(cmd[1:])}", flush=True)
    rc = subprocess.call(cmd)
    if rc:
        raise PipelineError(f"the {n} training processes under torchrun failed (exit {rc}); their errors are above")
    raise SystemExit(0)


@contextmanager
def group(device: torch.device) -> Iterator[torch.device]:
    """Under torchrun: the process group for the block (nccl on CUDA, gloo on the CPU) and this rank's
    device (cuda:<local rank>); ranks above 0 print nothing to stdout. Otherwise `device`, unchanged."""
    if not under_torchrun() or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    quiet = None if is_main() else open(os.devnull, "w")
    stdout, sys.stdout = sys.stdout, quiet or sys.stdout
    try:
        yield device
    finally:
        sys.stdout = stdout
        if quiet:
            quiet.close()
        dist.destroy_process_group()


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; tensors inside travel too)."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_rng() -> None:
    """Every rank continues from rank 0's global torch generator (dropout draws can set ranks apart)."""
    if world() > 1:
        torch.set_rng_state(from_main(torch.get_rng_state()))


def sums(*values: float, device: torch.device) -> tuple[float, ...]:
    """The sums over ranks of per-rank numbers (the numbers themselves in one process)."""
    if world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(float(v) for v in t.tolist())


def same(*values: float, device: torch.device) -> tuple[float, ...]:
    """Rank 0's numbers on every rank (validation scores: every rank decides alike)."""
    if world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return tuple(float(v) for v in t.tolist())


def all_reduce_grads(params: list[nn.Parameter]) -> None:
    """Sum the gradients over ranks in one flat all-reduce (a missing gradient counts as zeros)."""
    if world() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    off = 0
    for p in params:
        p.grad.copy_(flat[off : off + p.numel()].view(p.shape))
        off += p.numel()


def sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP does."""
    if world() > 1:
        for b in module.buffers():
            dist.broadcast(b, 0)


class _NoTracker:
    """What ranks above 0 log to: nothing."""

    def epoch(self, rec: dict[str, float], prefix: str = "") -> None:
        pass

    def metrics(self, values: dict[str, Any], prefix: str = "") -> None:
        pass

    def artifact(self, path: Any, folder: str | None = None) -> None:
        pass


@contextmanager
def stage_run(stage: str, params: dict[str, Any], experiment: str) -> Iterator[Any]:
    """The stage's one MLflow run on rank 0 (tracking.stage_run); a tracker that logs nothing elsewhere."""
    if is_main():
        with tracking.stage_run(stage, params, experiment) as tracker:
            yield tracker
    else:
        yield _NoTracker()
