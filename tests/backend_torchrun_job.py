"""Launched by tests/test_backend.py with torchrun (2 ranks): the backend via env:// and via an
explicit store in the per-device form. Usage: backend_torchrun_job.py FILESTORE_PATH"""
import os
import sys

import torch
import torch.distributed as dist

import fastallreduce as far


def check(tag: str) -> int:
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.full((1 << 16,), float(rank + 1))
    dist.all_reduce(x)
    assert torch.all(x == world * (world + 1) / 2), x[:4]
    y = torch.full((1000,), float(rank))
    work = dist.all_reduce(y, op=dist.ReduceOp.AVG, async_op=True)
    work.wait()
    assert work.is_completed() and torch.all(y == (world - 1) / 2), y[:4]
    z = torch.arange(5.0) * (rank + 1)
    dist.broadcast(z, src=1)
    assert torch.equal(z, torch.arange(5.0) * 2)
    dist.barrier()
    return far.backend.get_backend().engine_ops


def main() -> None:
    dist.init_process_group(backend="fastallreduce")  # torchrun's env:// rendezvous
    ops = check("env")
    print(f"OK rank {dist.get_rank()} env:// engine_ops={ops}", flush=True)
    dist.destroy_process_group()

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.FileStore(sys.argv[1], world)
    cuda = "nccl" if dist.is_nccl_available() and torch.cuda.is_available() else "gloo"
    dist.init_process_group(f"cpu:fastallreduce,cuda:{cuda}", store=store, rank=rank, world_size=world)
    ops = check("store")
    assert ops >= 2, ops  # the two allreduces ran on the engine
    print(f"OK rank {rank} store per-device cpu:fastallreduce,cuda:{cuda} engine_ops={ops}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
