"""Run functions on N local rank processes joined by torch.distributed (gloo, TCPStore).

A :class:`RankPool` starts its processes once and runs many functions on them, so tests and
benchmarks pay torch's import and the process-group set-up once per world size. Every call has a
timeout: a rank that hangs or dies makes the call raise instead of blocking forever.

:class:`LaunchedRanks` offers the same ``run`` on processes someone else started (torchrun): rank
0 drives, the other ranks serve, so code written against a RankPool runs on them unchanged.
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
    """A TCP port on 127.0.0.1 that was free a moment ago (for a store's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankError(RuntimeError):
    """One or more ranks raised; ``.errors`` maps rank -> (exception type name, message, traceback)."""

    def __init__(self, errors: dict):
        self.errors = errors
        lines = [f"rank {r}: {t}: {m}\n{tb}" for r, (t, m, tb) in sorted(errors.items())]
        super().__init__("ranks failed:\n" + "\n".join(lines))


def _call(fn: Callable, args: tuple, kwargs: dict) -> tuple:
    """``("ok", fn(*args, **kwargs))``, or ``("err", (type name, message, traceback))`` if it raised."""
    try:
        return ("ok", fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - report everything to the driver
        return ("err", (type(e).__name__, str(e), traceback.format_exc()))


def _results(replies: dict, world: int, raise_errors: bool) -> list:
    """Per-rank results from rank -> reply of :func:`_call` (RankPool.run's contract)."""
    results: list = [None] * world
    errors = {}
    for r, (tag, val) in replies.items():
        if tag == "ok":
            results[r] = val
        else:
            errors[r] = val
            results[r] = ("error", val[0], val[1])
    if errors and raise_errors:
        raise RankError(errors)
    return results


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
        conn.send(_call(fn, args, kwargs))
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
        replies = {}
        for r in (ranks if ranks is not None else range(self.world)):
            c = self.conns[r]
            while not c.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or not self.procs[r].is_alive():
                    why = "died" if not self.procs[r].is_alive() else f"did not answer within {timeout} s"
                    self.kill()
                    raise TimeoutError(f"rank {r} {why}")
            replies[r] = c.recv()
        return _results(replies, self.world, raise_errors)

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


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by torchrun (or another env:// launcher).

    True when RANK, WORLD_SIZE and MASTER_ADDR are all set: ``init_process_group`` can then join
    the other ranks through ``env://`` with no further arguments.
    """
    return all(os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


class LaunchedRanks:
    """The ranks of this job's default process group, driven like a :class:`RankPool`.

    For processes that were started by someone else (torchrun) and have called
    ``init_process_group``. Rank 0 is the driver: its :meth:`run` sends the function to every rank,
    runs it there too, and gathers the results (a rank that raised makes it raise
    :class:`RankError`, as a RankPool does). Every other rank calls :meth:`serve`, which runs what
    rank 0 sends until rank 0 leaves the ``with`` block (or calls :meth:`close`).

    Construction is collective. Calls and results travel on a gloo group of their own, so they
    never interleave with the collectives of the functions being run. There is no per-call
    timeout: every wait is bounded by the process group's timeout (``init_process_group(timeout=)``).
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("LaunchedRanks needs torch.distributed.init_process_group() first")
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self._group = dist.new_group(backend="gloo")
        self._open = True

    @property
    def is_driver(self) -> bool:
        """True on rank 0, the rank that calls :meth:`run`; the others call :meth:`serve`."""
        return self.rank == 0

    def run(self, fn: Callable, *args: Any, timeout: Optional[float] = None, per_rank_args: Optional[list] = None,
            raise_errors: bool = True, **kwargs: Any) -> list:
        """Runs ``fn(*args, **kwargs)`` on every rank (``fn(*per_rank_args[r])`` if given); rank 0 only.

        Returns the per-rank results, as :meth:`RankPool.run`. ``timeout`` is accepted for the same
        signature; the process group's timeout bounds the call instead.
        """
        import torch.distributed as dist

        if not self.is_driver:
            raise RuntimeError("LaunchedRanks.run is for rank 0; the other ranks call serve()")
        if not self._open:
            raise RuntimeError("LaunchedRanks is closed")
        msg = (fn, args, kwargs, per_rank_args)
        self._send(msg)
        reply = self._execute(msg)
        replies: list = [None] * self.world
        dist.gather_object(reply, replies, dst=0, group=self._group)
        return _results(dict(enumerate(replies)), self.world, raise_errors)

    def serve(self) -> None:
        """Runs the functions rank 0 sends until rank 0 closes; on every rank but 0."""
        import torch.distributed as dist

        if self.is_driver:
            raise RuntimeError("LaunchedRanks.serve is for the ranks other than 0")
        while True:
            msg: list = [None]
            dist.broadcast_object_list(msg, src=0, group=self._group)
            if msg[0] is None:
                return
            dist.gather_object(self._execute(msg[0]), None, dst=0, group=self._group)

    def close(self) -> None:
        """On rank 0: releases the serving ranks (their :meth:`serve` returns). Idempotent."""
        if self.is_driver and self._open:
            self._send(None)
        self._open = False

    def _send(self, msg: Optional[tuple]) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([msg], src=0, group=self._group)

    def _execute(self, msg: tuple) -> tuple:
        fn, args, kwargs, per_rank_args = msg
        return _call(fn, tuple(per_rank_args[self.rank]) if per_rank_args is not None else args, kwargs)

    def __enter__(self) -> "LaunchedRanks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
