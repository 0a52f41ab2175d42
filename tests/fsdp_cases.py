"""Per-rank functions for test_fsdp.py (RankPool ranks, default group on "fastallreduce"): the
in-place gather family that FSDP2 issues, and a fully_shard training step, against gloo."""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from fault_cases import outcome

_gloo: list = []


def _gloo_group() -> dist.ProcessGroup:
    if not _gloo:
        _gloo.append(dist.new_group(backend="gloo"))
    return _gloo[0]


def _input(rank: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * n + rank)
    return torch.randint(-3, 4, (n,), generator=g).to(dtype)  # small integers: exact sums


def in_place_family(async_op: bool) -> list:
    """all_gather_into_tensor(out, out[my slice]) and reduce_scatter_tensor(inp[my slice], inp)
    on this backend and on gloo, for several dtypes and sizes; the mismatches found."""
    r, k = dist.get_rank(), dist.get_world_size()
    diffs = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.int32):
        for n in (1, 7, 3001, 70000):
            got = {}
            for name, g in (("far", None), ("gloo", _gloo_group())):
                out = torch.zeros(k * n, dtype=dtype)
                out.narrow(0, r * n, n).copy_(_input(r, n, dtype))
                w = dist.all_gather_into_tensor(out, out.narrow(0, r * n, n), group=g, async_op=async_op)
                inp = _input(r, k * n, dtype)
                w2 = dist.reduce_scatter_tensor(inp.narrow(0, r * n, n), inp, group=g, async_op=async_op)
                if async_op:
                    w.wait(timeout=timedelta(seconds=60))
                    w2.wait(timeout=timedelta(seconds=60))
                got[name] = (out, inp.narrow(0, r * n, n).clone())
            for i, what in enumerate(("all_gather_into_tensor", "reduce_scatter_tensor")):
                if not torch.equal(got["far"][i], got["gloo"][i]):
                    diffs.append((what, str(dtype), n))
    return diffs


def other_overlap(bad_rank: int) -> tuple:
    """``bad_rank`` passes its neighbour's slice of the output as input (an overlap that is not
    the in-place form), the others their own slice: every rank raises, promptly. On a group of
    its own, which the rejection aborts."""
    g = dist.new_group(backend="fastallreduce", timeout=timedelta(seconds=30))
    r, k, n = dist.get_rank(), dist.get_world_size(), 8
    out = torch.zeros(k * n)
    src = (r + 1) % k if r == bad_rank else r
    res = outcome(lambda: dist.all_gather_into_tensor(out, out.narrow(0, src * n, n), group=g))
    dist.destroy_process_group(g)
    return res


def fully_shard_step(steps: int) -> dict:
    """The same model trained ``steps`` SGD steps with FSDP2 (fully_shard) over this backend's
    group and over a gloo group, from the same start and data: their full parameters."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    r = dist.get_rank()
    params = {}
    for name, g in (("far", dist.group.WORLD), ("gloo", _gloo_group())):
        mesh = DeviceMesh.from_group(g, "cpu")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        data = torch.Generator().manual_seed(r)
        for _ in range(steps):
            x = torch.randn(6, 16, generator=data)
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        params[name] = [p.full_tensor().clone() for p in model.parameters()]
    same = all(torch.equal(a, b) for a, b in zip(params["far"], params["gloo"]))
    close = all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(params["far"], params["gloo"]))
    moved = any(not torch.equal(p, q) for p, q in zip(params["far"], _initial_params()))
    return {"identical": same, "close": close, "moved": moved}


def _initial_params() -> list:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5))
    return [p.detach() for p in model.parameters()]
