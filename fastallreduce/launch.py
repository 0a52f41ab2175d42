"""Run functions on N local rank processes joined by torch.distributed (gloo, TCPStore).

A :class:`RankPool` starts its processes once and runs many functions on them, so tests and
benchmarks pay torch's import and the process-group set-up once per world size. Every call has a
timeout: a rank that hangs or dies makes the call raise instead of blocking forever.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
import traceback
from datetime import timedelta
from typing import Any, Callable, Optional


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankError(RuntimeError):
    """One or more ranks raised; ``.errors`` maps rank -> (exception type name, message, traceback)."""

    def __init__(self, errors: dict):
        self.errors = errors
        lines = [f"rank {r}: {t}: {m}\n{tb}" for r, (t, m, tb) in sorted(errors.items())]
        super().__init__("ranks failed:\n" + "\n".join(lines))


def _worker(rank: int, world: int, port: int, conn, env: dict, threads: int, pg_timeout_s: float,
            backend: str = "gloo") -> None:
    os.environ.update(env)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist

    if "fastallreduce" in backend:
        import fastallreduce  # noqa: F401  (registers the backend)
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=pg_timeout_s))
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        fn, args, kwargs = msg
        try:
            conn.send(("ok", fn(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            conn.send(("err", (type(e).__name__, str(e), traceback.format_exc())))
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


class RankPool:
    """``world`` processes with torch.distributed initialised (gloo on loopback, or ``backend``)."""

    def __init__(self, world: int, *, env: Optional[dict] = None, threads: int = 1,
                 start_timeout: float = 120.0, pg_timeout_s: float = 120.0, backend: str = "gloo") -> None:
        ctx = mp.get_context("spawn")
        self.world = world
        port = free_port()
        self.procs, self.conns = [], []
        for r in range(world):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(r, world, port, child, dict(env or {}), threads, pg_timeout_s, backend),
                            daemon=True, name=f"fastallreduce-rank{r}")
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.pids = [None] * world
        deadline = time.monotonic() + start_timeout
        for r, c in enumerate(self.conns):
            if not c.poll(max(0.0, deadline - time.monotonic())):
                self.kill()
                raise TimeoutError(f"rank {r} did not start within {start_timeout} s")
            tag, pid = c.recv()
            self.pids[r] = pid

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def run(self, fn: Callable, *args: Any, timeout: float = 120.0, per_rank_args: Optional[list] = None,
            raise_errors: bool = True, **kwargs: Any) -> list:
        """Runs ``fn(*args, **kwargs)`` on every rank (``fn(*per_rank_args[r])`` if given).

        Returns the per-rank results. If any rank raised and ``raise_errors``, raises RankError;
        otherwise a failed rank's entry is an ``("error", type name, message)`` tuple. A rank that
        does not answer within ``timeout`` seconds kills the pool and raises TimeoutError.
        """
        for r, c in enumerate(self.conns):
            a = per_rank_args[r] if per_rank_args is not None else args
            c.send((fn, tuple(a), kwargs))
        return self.collect(timeout=timeout, raise_errors=raise_errors)

    def collect(self, timeout: float = 120.0, raise_errors: bool = True, ranks: Optional[list] = None) -> list:
        deadline = time.monotonic() + timeout
        results: list = [None] * self.world
        errors = {}
        for r in (ranks if ranks is not None else range(self.world)):
            c = self.conns[r]
            while not c.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or not self.procs[r].is_alive():
                    why = "died" if not self.procs[r].is_alive() else f"did not answer within {timeout} s"
                    self.kill()
                    raise TimeoutError(f"rank {r} {why}")
            tag, val = c.recv()
            if tag == "ok":
                results[r] = val
            else:
                errors[r] = val
                results[r] = ("error", val[0], val[1])
        if errors and raise_errors:
            raise RankError(errors)
        return results

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(timeout=10)

    def close(self, timeout: float = 30.0) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
        self.kill()

    def __enter__(self) -> "RankPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
