"""Per-rank functions for test_recreate.py: process groups and communicators made, used and
destroyed again and again over one store, as in-process restarts do."""
from __future__ import annotations

import time
from datetime import timedelta

import torch
import torch.distributed as dist

import fastallreduce as far


def _check(x: torch.Tensor, expect: float) -> bool:
    return bool((x == expect).all())


def backend_cycles(port: int, cycles: int, comms: int) -> dict:
    """Leaves the pool's own group, then ``cycles`` times: init_process_group("fastallreduce") on
    one TCPStore, an engine allreduce and a delegated reduce, destroy_process_group(). Then a gloo
    group on the same store and ``comms`` Communicators made, used and closed one after another.
    Per cycle: whether each result was exact, and the seconds it took."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.destroy_process_group()
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=timedelta(seconds=30))
    total = world * (world + 1) / 2
    out = {"backend": [], "communicator": []}
    for i in range(cycles):
        t0 = time.monotonic()
        dist.init_process_group("fastallreduce", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=20))
        x = torch.full((40000,), float(rank + 1 + i))  # the engine (shared memory)
        dist.all_reduce(x)
        y = torch.full((5,), float(rank + 1))  # delegated to the backend's Gloo
        dist.reduce(y, dst=0)
        ok = _check(x, total + world * i) and (rank != 0 or _check(y, total))
        dist.destroy_process_group()
        out["backend"].append((ok, time.monotonic() - t0))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=20))
    for i in range(comms):
        t0 = time.monotonic()
        c = far.Communicator(timeout=timedelta(seconds=20))
        x = c.allreduce(torch.full((40000,), float(rank + 1 + i)))
        c.close()
        out["communicator"].append((_check(x, total + world * i), time.monotonic() - t0))
    dist.destroy_process_group()
    return out
