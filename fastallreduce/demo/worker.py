"""The demo's per-rank worker: module-level functions that :class:`~fastallreduce.launch.RankPool`
runs on every worker process (one run's set-up, one epoch, the end of a run)."""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .data import load_data
from .model import SmallResNet


def milestones_for(epochs: int) -> tuple[int, ...]:
    """The paper's decay epochs 30, 60, 80 of 90, scaled to ``epochs`` (distinct, within the run)."""
    ms = sorted({max(1, round(epochs * m / 90)) for m in (30, 60, 80)})
    return tuple(m for m in ms if m < epochs)


# State of the current run on this worker, kept between the calls the driver makes.
_w: dict[str, Any] = {}


def worker_setup(cfg: dict[str, Any]) -> dict[str, Any]:
    """Builds data, model, DDP with the fastallreduce hook, optimizer and schedule for one run."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fastallreduce as far
    from fastallreduce import ddp as far_ddp
    from fastallreduce import optim as far_optim

    rank, world = dist.get_rank(), dist.get_world_size()
    key = (cfg["data"], cfg["quick"], cfg.get("train_size"))
    if _w.get("data_key") != key:
        _w["data"] = load_data(cfg["data"], quick=cfg["quick"], train_size=cfg.get("train_size"))
        _w["data_key"] = key
    if "comm" not in _w and cfg["comm"] == "fastallreduce":  # one communicator per worker, shared by all runs (creating one is a collective)
        _w["comm"] = far.Communicator()
    torch.manual_seed(cfg["seed"])  # same initial weights everywhere (DDP also broadcasts rank 0's)
    side = _w["data"]["xtr"].shape[-1]
    model = SmallResNet(cfg["width"], num_classes=_w["data"]["num_classes"], stem_stride=2 if side >= 16 else 1)
    far_optim.zero_init_last_bn(model)
    # broadcast_buffers=False: BatchNorm statistics stay per worker, as in the paper.
    with warnings.catch_warnings():
        # torch >= 2.13 deprecates broadcast_buffers but its replacement still syncs at init;
        # per-worker BN statistics need exactly broadcast_buffers=False (the warning says so too).
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DDP(model, broadcast_buffers=False)
    # The hook under test; "ddp" keeps DDP's own gloo allreduce as a reference (no overlap statistics).
    state = far_ddp.register(ddp, communicator=_w["comm"]) if cfg["comm"] == "fastallreduce" else None
    minibatch = world * cfg["n"] * cfg["accum"]
    lr = far_optim.scaled_lr(minibatch, base_lr=cfg["base_lr"], reference_batch=cfg["base_minibatch"])
    opt = far_optim.SGD(far_optim.param_groups(model, cfg["weight_decay"]), lr=lr, momentum=0.9)
    n_train = len(_w["data"]["ytr"])
    iters_per_epoch = n_train // minibatch
    if iters_per_epoch < 1:
        raise ValueError(f"minibatch {minibatch} is larger than the training set ({n_train})")
    sched = far_optim.WarmupSchedule(
        opt, iters_per_epoch=iters_per_epoch, warmup=cfg["warmup"], warmup_epochs=cfg["warmup_epochs"],
        warmup_start_lr=cfg["base_lr"], milestones=milestones_for(cfg["epochs"]), gamma=0.1)
    _w.update(cfg=cfg, model=model, ddp=ddp, state=state, opt=opt, sched=sched, rank=rank, world=world,
              minibatch=minibatch, iters_per_epoch=iters_per_epoch)
    return {"minibatch": minibatch, "lr": lr, "iters_per_epoch": iters_per_epoch, "train_size": n_train,
            "test_size": len(_w["data"]["yte"]), "params": sum(p.numel() for p in model.parameters())}


def worker_epoch(epoch: int) -> dict[str, Any]:
    """One epoch: one shuffle shared by all workers, split into per-worker batches of n; then test."""
    import torch.distributed as dist

    cfg, data, ddp, opt, sched, state = (_w[k] for k in ("cfg", "data", "ddp", "opt", "sched", "state"))
    rank, world, n, accum = _w["rank"], _w["world"], cfg["n"], cfg["accum"]
    g = torch.Generator().manual_seed(cfg["seed"] * 100003 + epoch)
    perm = torch.randperm(len(data["ytr"]), generator=g)  # identical on every worker
    ddp.train()
    loss_sum, micro, wrong = 0.0, 0, 0
    losses = []
    lrs = []
    comm_s = exposed_s = 0.0
    nbytes = 0
    dist.barrier()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for it in range(_w["iters_per_epoch"]):
        lrs.append(opt.param_groups[0]["lr"])
        for m in range(accum):
            start = ((it * accum + m) * world + rank) * n
            idx = perm[start:start + n]
            x, y = data["xtr"][idx], data["ytr"][idx]
            # Each worker's loss is its mean over n, divided by accum; DDP's hook averages over the
            # k workers, so the step uses the mean over the whole minibatch k·n·accum.
            # All but the last micro-batch accumulate locally; the last one's backward allreduces.
            with ddp.no_sync() if m < accum - 1 else contextlib.nullcontext():
                out = ddp(x)
                loss = F.cross_entropy(out, y)
                (loss / accum).backward()
            # Training error as the paper plots it: on the minibatches as they are trained on.
            wrong += int((out.detach().argmax(1) != y).sum())
            losses.append(float(loss.detach()))
            loss_sum += losses[-1]
            micro += 1
        st = state.stats() if state is not None else {}
        comm_s += st.get("comm_time_s", 0.0)
        exposed_s += st.get("exposed_s", 0.0)
        nbytes += int(st.get("bytes", 0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    # CPU time estimates the wall time on an idle machine (one core per worker) when others share it.
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    # Test error: every worker scores its share of the test set with its own BN statistics.
    ddp.eval()
    xte, yte = data["xte"][rank::world], data["yte"][rank::world]
    with torch.no_grad():
        pred = _w["model"](xte).argmax(1)
    q = max(1, len(losses) // 4)
    counts = torch.tensor([float((pred != yte).sum()), float(len(yte)), loss_sum, float(micro),
                           sum(losses[:q]) / q, sum(losses[-q:]) / q, float(wrong)], dtype=torch.float64)
    dist.all_reduce(counts)
    counts[4:6] /= world
    return {"epoch": epoch + 1, "test_error": 100.0 * float(counts[0] / counts[1]),
            "train_error": 100.0 * float(counts[6] / (counts[3] * n)),
            "train_loss": float(counts[2] / counts[3]), "loss_first_quarter": float(counts[4]),
            "loss_last_quarter": float(counts[5]), "train_s": train_s, "cpu_s": cpu_s, "comm_s": comm_s,
            "exposed_s": exposed_s, "bytes": nbytes, "lr_first": lrs[0], "lr_last": lrs[-1],
            "lr_max": max(lrs)}


def worker_finish() -> None:
    for k in ("model", "ddp", "state", "opt", "sched"):
        _w.pop(k, None)
