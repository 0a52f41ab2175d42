"""End-to-end DDP step benchmark: a small ResNet on synthetic images, measured four ways in one
run on the same processes — no communication, DDP's default reducer on gloo, DDP's default reducer
on a group of the "fastallreduce" torch.distributed backend, and DDP with the fastallreduce hook —
at DDP's default bucket size and at a small one.

    python -m fastallreduce.bench.ddp_step [--steps 10] [--buckets 25,1]

``--comm-bound`` measures a model where communication dominates instead: a wide MLP (25M
parameters, a batch of 8 per rank), with the rows no communication, DDP on gloo, the hook with
copying (``zero_copy=False``), the hook with zero-copy buckets, DDP with a no-op hook (the
floor: DDP's own bucketing, no communication), and the step's buckets allreduced alone from
registered memory (the reduction the zero-copy hook cannot avoid).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Optional

import torch
import torch.nn as nn

from ..launch import RankPool
from ..models import BasicBlock

#: Measured modes, in the order of each round: no communication; DDP's default reducer on gloo (the
#: default group); the same reducer on a fastallreduce-backend group; DDP with the fastallreduce hook.
MODES = ("nocomm", "ddp", "ddp_far", "hook")
#: Extra mode with --machinery: DDP with a hook that returns the bucket untouched and no buffer
#: broadcast, i.e. what DDP's own bucketing costs without any communication (the floor under
#: every DDP mode).
MACHINERY = "ddp_noop"
#: The hook with its buckets left where DDP put them (every allreduce copies into shared memory).
HOOK_COPY = "hook_copy"
#: No DDP: the step's gradient bytes, in DDP's buckets, allreduced (avg, async, in order) from
#: registered buffers on the hook's kind of Communicator, then waited for: the reduction alone,
#: what the zero-copy hook's step may add to the floor at best.
REDUCTION = "reduction"
#: Modes of --comm-bound, in order.
COMM_BOUND_MODES = ("ddp", HOOK_COPY, "hook", MACHINERY, REDUCTION)


def _noop_hook(state, bucket):  # no annotations: this module's are strings, DDP checks them by identity
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def resnet18_cifar(widths=(32, 64, 128, 256), classes: int = 10) -> nn.Module:
    """ResNet-18 layout (2-2-2-2 basic blocks) with a CIFAR stem (3x3 conv, no max-pool)."""
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for i, w in enumerate(widths):
        for j in range(2):
            layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def wide_mlp(width: int = 4096, io: int = 1024, classes: int = 10) -> nn.Module:
    """io -> width -> width -> io -> classes: 25.2M parameters at the defaults, little compute per
    example, so that a small batch leaves the step to communication."""
    return nn.Sequential(nn.Linear(io, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, io), nn.ReLU(), nn.Linear(io, classes))


def _inputs(model_name: str, batch: int, g: torch.Generator):
    if model_name == "mlp":
        return torch.randn(batch, 1024, generator=g), torch.randint(0, 10, (batch,), generator=g)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)


def _bucket_numels(model: nn.Module, bucket_mb: float, as_view: bool, x, y) -> list:
    """The element counts of the buckets DDP makes for ``model`` (after its first-step rebuild)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    sizes: list = []

    def record(state, bucket):
        sizes.append(bucket.buffer().numel())
        return _noop_hook(state, bucket)

    net = DDP(model, bucket_cap_mb=bucket_mb, gradient_as_bucket_view=as_view)
    net.register_comm_hook(None, record)
    for _ in range(2):  # DDP rebuilds its buckets after the first step
        sizes.clear()
        nn.CrossEntropyLoss()(net(x), y).backward()
    return list(sizes)


def _reduction_run(model: nn.Module, bucket_mb: float, steps: int, warmup: int, as_view: bool, x, y) -> dict:
    import torch.distributed as dist

    import fastallreduce as far

    comm = far.Communicator()
    bufs = [comm.empty(n, dtype=torch.float32).fill_(1.0) for n in _bucket_numels(model, bucket_mb, as_view, x, y)]
    times = []
    for i in range(warmup + steps):
        for b in bufs:
            b.fill_(1.0)  # written before the op, as backward writes a bucket (untimed)
        dist.barrier()
        t0 = time.perf_counter()
        for f in [comm.allreduce(b, op="avg", async_op=True) for b in bufs]:
            f.wait()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    comm.close()
    return {"times": times, "exposed": [], "params": sum(p.numel() for p in model.parameters()), "copied": []}


def _rank_run(mode: str, bucket_mb: float, steps: int, warmup: int, batch: int, as_view: bool = False,
              model_name: str = "resnet") -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fastallreduce as far

    torch.manual_seed(0)
    model = wide_mlp() if model_name == "mlp" else resnet18_cifar()
    if mode == REDUCTION:
        x, y = _inputs(model_name, batch, torch.Generator().manual_seed(dist.get_rank()))
        return _reduction_run(model, bucket_mb, steps, warmup, as_view, x, y)
    state = None
    if mode == "nocomm":
        net = model
    else:
        # ddp_far: no hook, DDP's own reducer, its process group on the fastallreduce backend (made
        # on the first such round, collectively -- every rank runs the same configs in the same
        # order -- and reused by later rounds).
        group = far.backend.world_group() if mode == "ddp_far" else None
        quiet = {"forward_sync_buffers": False} if mode == MACHINERY else {}
        net = DDP(model, bucket_cap_mb=bucket_mb, process_group=group, gradient_as_bucket_view=as_view, **quiet)
        if mode in ("hook", HOOK_COPY):
            state = far.ddp.register(net, zero_copy=mode == "hook")
        elif mode == MACHINERY:
            net.register_comm_hook(None, _noop_hook)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(dist.get_rank())
    x, y = _inputs(model_name, batch, g)
    lossf = nn.CrossEntropyLoss()
    times, exposed, copied = [], [], []
    for i in range(warmup + steps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        lossf(net(x), y).backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
            if state is not None:
                exposed.append(state.stats()["exposed_s"])
                copied.append(state.stats()["bytes_copied_in"])
    if state is not None:
        state.comm.close()
    return {"times": times, "exposed": exposed, "params": sum(p.numel() for p in model.parameters()),
            "copied": copied}


def run(world: int = 2, steps: int = 10, warmup: int = 3, bucket_mbs=(25.0, 1.0), batch: int = 32,
        pool: Optional[RankPool] = None, rounds: int = 3, gradient_as_bucket_view: bool = False,
        machinery: bool = False, comm_bound: bool = False) -> list[dict]:
    """Measures every mode in one run on the same processes; returns one row per (mode, bucket).

    ``gradient_as_bucket_view`` is passed to every DDP; ``machinery`` adds the ``ddp_noop`` mode.
    The hook mode is ``fastallreduce.ddp.register(ddp)``: gradients and DDP's buffer broadcast on
    the Communicator. ``comm_bound`` measures the wide MLP with :data:`COMM_BOUND_MODES`.
    """
    own = pool is None
    pool = pool or RankPool(world, threads=1)
    rows = []
    modes = COMM_BOUND_MODES if comm_bound else MODES[1:] + ((MACHINERY,) if machinery else ())
    model_name = "mlp" if comm_bound else "resnet"
    configs = [("nocomm", 0.0)] + [(m, b) for b in bucket_mbs for m in modes]
    samples: dict = {c: ([], [], 0) for c in configs}
    copied: dict = {c: 0 for c in configs}
    try:
        # Interleave the modes over several rounds so that drift in a shared machine's load
        # hits them all alike.
        for _ in range(rounds):
            for mode, b in configs:
                res = pool.run(_rank_run, mode, b, steps, warmup, batch, gradient_as_bucket_view, model_name,
                               timeout=1800)
                n = len(res[0]["times"])
                if res[0]["copied"]:
                    copied[(mode, b)] = max(r["copied"][-1] for r in res)
                samples[(mode, b)][0].extend(max(r["times"][i] for r in res) for i in range(n))
                if res[0]["exposed"]:
                    samples[(mode, b)][1].extend(max(r["exposed"][i] for r in res) for i in range(n))
                samples[(mode, b)] = (samples[(mode, b)][0], samples[(mode, b)][1], res[0]["params"])
    finally:
        if own:
            pool.close()
    for (mode, b), (times, exposed, params) in samples.items():
        rows.append({"mode": mode, "bucket_mb": b, "step_ms": statistics.median(times) * 1e3,
                     "exposed_ms": statistics.median(exposed) * 1e3 if exposed else None,
                     "steps": len(times), "params": params, "world": world, "batch_per_rank": batch,
                     "gradient_as_bucket_view": gradient_as_bucket_view, "model": model_name,
                     "bytes_copied_in": copied[(mode, b)] if mode in ("hook", HOOK_COPY) else None})
    base = rows[0]["step_ms"]
    ddp_ms = {r["bucket_mb"]: r["step_ms"] for r in rows if r["mode"] == "ddp"}
    floor_ms = {r["bucket_mb"]: r["step_ms"] for r in rows if r["mode"] == MACHINERY}
    reduction_ms = {r["bucket_mb"]: r["step_ms"] for r in rows if r["mode"] == REDUCTION}
    for r in rows:
        if r["mode"] == "hook" and r["bucket_mb"] in reduction_ms:
            # The zero-copy hook's time above the floor against the reduction alone: 1 or less means
            # nothing of the step's communication path is exposed beyond the reduction itself.
            r["above_floor_ms"] = r["step_ms"] - floor_ms[r["bucket_mb"]]
            r["above_floor_vs_reduction"] = r["above_floor_ms"] / reduction_ms[r["bucket_mb"]]
        if comm_bound and r["mode"] in ("hook", HOOK_COPY):
            # Goal: (t_hook - t_floor) <= 0.25 (t_gloo - t_floor), the floor being DDP's own cost.
            fl, gap = floor_ms[r["bucket_mb"]], ddp_ms[r["bucket_mb"]] - floor_ms[r["bucket_mb"]]
            r["comm_overhead_vs_ddp"] = (r["step_ms"] - fl) / gap if gap > 0 else None
            r["goal_ms"] = fl + 0.25 * gap
        elif r["mode"] in ("ddp_far", "hook"):
            # The step time communication adds, as a share of what DDP's default on gloo adds
            # (undefined when noise makes gloo's DDP no slower than no communication at all).
            gap = ddp_ms[r["bucket_mb"]] - base
            r["comm_overhead_vs_ddp"] = (r["step_ms"] - base) / gap if gap > 0 else None
        if r["mode"] == "hook":
            # Goal: hook <= nocomm + 25% of (ddp - nocomm), and never slower than ddp.
            r["goal_ms"] = base + 0.25 * (ddp_ms[r["bucket_mb"]] - base)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`run` as a Markdown table (one line per mode and bucket size)."""
    lines = ["| mode | bucket MB | step ms (median) | exposed comm ms | overhead vs DDP's | goal ms | bytes copied in |",
             "|---|---|---|---|---|---|---|"]
    names = {"nocomm": "no communication", "ddp": "DDP default (gloo)",
             "ddp_far": "DDP default reducer on the fastallreduce backend", "hook": "DDP + fastallreduce hook",
             HOOK_COPY: "DDP + fastallreduce hook, copying (zero_copy=False)",
             MACHINERY: "DDP + no-op hook, no buffer broadcast (DDP's own cost, no communication)",
             REDUCTION: "the step's buckets allreduced alone (registered, no DDP)"}
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        lines.append(f"| {names[r['mode']]} | {r['bucket_mb'] or '-'} | {r['step_ms']:.1f} | "
                     f"{fmt(r.get('exposed_ms'), '.1f')} | {fmt(r.get('comm_overhead_vs_ddp'), '.0%')} | "
                     f"{fmt(r.get('goal_ms'), '.1f')} | {fmt(r.get('bytes_copied_in'), ',')} |")
    for r in rows:
        if "above_floor_vs_reduction" in r:
            lines.append(f"\nzero-copy hook above the no-op floor ({r['bucket_mb']} MB buckets): "
                         f"{r['above_floor_ms']:.1f} ms, {r['above_floor_vs_reduction']:.2f}x the reduction alone")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="per rank (default 32; 8 with --comm-bound)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every mode")
    ap.add_argument("--buckets", default=None, help="bucket sizes in MB, comma separated (default 25,1; 25 with --comm-bound)")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--gradient-as-bucket-view", action="store_true",
                    help="DDP(gradient_as_bucket_view=True) in every DDP mode (no gradient copies into and out of buckets)")
    ap.add_argument("--machinery", action="store_true",
                    help="also measure DDP with a no-op hook: DDP's own bucketing cost without communication")
    ap.add_argument("--comm-bound", action="store_true",
                    help="the wide MLP (25M parameters) with copying and zero-copy hook rows and the no-op floor")
    a = ap.parse_args(argv)
    batch = a.batch if a.batch is not None else (8 if a.comm_bound else 32)
    buckets = a.buckets or ("25" if a.comm_bound else "25,1")
    rows = run(a.world, a.steps, a.warmup, tuple(float(b) for b in buckets.split(",")), batch, rounds=a.rounds,
               gradient_as_bucket_view=a.gradient_as_bucket_view, machinery=a.machinery, comm_bound=a.comm_bound)
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
