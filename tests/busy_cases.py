"""Per-rank functions for test_busy_cores.py (RankPool ranks, default group on gloo): async
collectives while other normal-priority processes keep every core busy."""
from datetime import timedelta

import torch
import torch.distributed as dist

import fastallreduce as far
from fault_cases import outcome


def async_allreduce_under_load(nbytes: int, rounds: int) -> list:
    """``rounds`` times: an async allreduce of ``nbytes`` and an immediate wait(), then the same
    call sync; per round, each one's outcome, seconds and whether the result is the exact sum."""
    c = far.Communicator(timeout=timedelta(seconds=60))
    r, k = dist.get_rank(), dist.get_world_size()
    base = torch.arange(nbytes // 4, dtype=torch.float32).remainder_(1000)
    expect = base * k + k * (k - 1) / 2
    out = []
    for _ in range(rounds):
        got = {}
        for mode in ("async", "sync"):
            x = base + r
            dist.barrier()
            if mode == "async":
                res = outcome(lambda: c.allreduce(x, async_op=True).wait())
            else:
                res = outcome(lambda: c.allreduce(x))
            got[mode] = (res[0], res[1], res[2], bool(torch.equal(x, expect)))
        out.append(got)
    c.close()
    return out

