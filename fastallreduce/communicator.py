"""The Communicator: fastallreduce's collectives over a torch.distributed process group.

A thin adapter: arguments are turned into codes and handed to the C++ engine
(``fastallreduce._C.Communicator``), whose single entry validates them, picks the path from what
every rank shares, checks the header across ranks and runs the call.
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import warnings
import weakref
from datetime import timedelta
from typing import Any, Literal, Optional, Union, overload

import torch
import torch.distributed as dist
from torch.futures import Future

from . import _C, _groups, knobs
from .arrays import ArrayFuture, as_tensor
from .registered import RegisteredBuffers

log = logging.getLogger("fastallreduce")
if str(knobs.value("FASTALLREDUCE_LOG")).lower() == "debug":
    logging.basicConfig()
    log.setLevel(logging.DEBUG)

#: Algorithm names accepted by ``Communicator(algorithm=...)`` and ``allreduce(algorithm=...)``
#: (the engine's :class:`fastallreduce._C.Algo`; its members are accepted too).
ALGORITHMS = tuple(_C.Algo.__members__)

#: Reduce ops accepted as strings (the engine's :class:`fastallreduce._C.Op`); its members and
#: torch.distributed.ReduceOp values work too.
OPS = tuple(_C.Op.__members__)

_live: "weakref.WeakSet[Communicator]" = weakref.WeakSet()
_live_lock = threading.Lock()
_made: dict = {}  # communicators made by this process, per exact rank list


def host_identity() -> str:
    """This host's identity as the engine sees it: hostname, kernel boot id, pid namespace and
    the device of /dev/shm (processes that share all four can share memory)."""
    return _C.host_identity()


class Communicator(RegisteredBuffers):
    """Collectives over the ranks of a torch.distributed process group, on the fastallreduce engine.

    Creating one is a collective over ``group``: every member must construct it, in the same
    order relative to other collectives. It makes its own gloo group over the same ranks, so its
    traffic never interleaves with DDP's or the user's collectives on ``group``. One rank's
    invalid configuration (arguments or ``FASTALLREDUCE_*`` variables) makes every rank's
    constructor raise ``ValueError``; otherwise every rank uses rank 0's configuration.

    Collectives run in the order they are issued (which must be the same order on every rank).
    A synchronous call with nothing queued runs on the calling thread (GIL released); async
    calls run on the communicator's worker thread. Tensors may be non-contiguous (they are
    staged through a contiguous copy, identically on every rank).

    CUDA tensors run on the communicator's own NCCL group (torch's ProcessGroupNCCL over the same
    ranks), made at its first CUDA call, after the same argument and header checks as on the CPU.
    As with torch.distributed, the op is ordered after the work queued on the caller's current
    stream; a synchronous call returns once the result is ready on that stream (the CPU does not
    wait for the GPU); ``async_op=True`` returns a CUDA-aware Future (``wait()`` makes the current
    stream wait, ``then`` callbacks run after the op). ``algorithm`` chooses among CPU paths only.
    DLPack-capable arrays (NumPy, CuPy) are accepted wherever a tensor is, zero-copy, and given
    back as they came (:mod:`fastallreduce.arrays`). Tensors in registered memory
    (:meth:`empty`, :meth:`register`) are reduced in place without a copy into shared memory
    (:mod:`fastallreduce.registered`).

    Faults are errors on every rank, never hangs: a mismatched call (kind, size, dtype, op, root,
    algorithm) raises :class:`MismatchError`; a call one rank rejects (a bad argument raises
    ``TypeError``/``ValueError``/``NotImplementedError`` there, before anything is sent) raises
    :class:`MismatchError` on the ranks that made it; a rank that dies or stops calling makes the
    others raise :class:`CommTimeoutError` / :class:`CommError` naming the ranks that did not
    arrive. After a fault the communicator is aborted and further calls raise
    :class:`ClosedError`, as does any use in a forked child.

    Args:
        group: the process group (None: the default group).
        algorithm: "auto", "ring", "halving_doubling", "shm" (every rank on one host) or
            "hierarchical".
        timeout: per-collective timeout (default: the timeout ``group`` was made with, as given to
            ``init_process_group`` or ``new_group``; at most 366 days).
        chunk_bytes: pipeline segment size of the point-to-point algorithms.
        host_id: override this process's host identity (tests use it to simulate hosts).
    """

    def __init__(self, group: Optional[dist.ProcessGroup] = None, algorithm: str = "auto", *,
                 timeout: Optional[timedelta] = None, chunk_bytes: Optional[int] = None,
                 host_id: Optional[str] = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("fastallreduce.Communicator needs torch.distributed.init_process_group() first")
        user_group = group if group is not None else dist.group.WORLD
        ranks = dist.get_process_group_ranks(user_group)
        if dist.get_rank() not in ranks:
            raise ValueError("fastallreduce: this process is not a member of the given group")
        if timeout is None:
            timeout = min(_groups.group_timeout(user_group), _groups.MAX_TIMEOUT)
        self.group = user_group
        # Our own store namespace over the same ranks. The name depends only on the ranks and on
        # how many communicators this process made over exactly these ranks, which agree on every
        # member because construction is collective.
        key = "_".join(map(str, ranks))
        with _live_lock:
            _made[key] = _made.get(key, 0) + 1
            uid = f"{hashlib.sha1(key.encode()).hexdigest()[:12]}-{_made[key]}"
        store = dist.PrefixStore(f"fastallreduce/{uid}/", dist.distributed_c10d._get_default_store())
        self._start(store, ranks.index(dist.get_rank()), len(ranks), algorithm, timeout, chunk_bytes, host_id, uid)

    @classmethod
    def _from_store(cls, store: dist.Store, rank: int, size: int, *, algorithm: str = "auto",
                    timeout: timedelta = _groups.DEFAULT_TIMEOUT, uid: str = "store") -> "Communicator":
        """A Communicator over ``size`` ranks that rendezvous through ``store`` (private to it).
        Collective over the ``size`` members; for code that has a store but no default group."""
        self = cls.__new__(cls)
        self.group = None
        self._start(store, rank, size, algorithm, timeout, None, None, uid)
        return self

    def _start(self, store: dist.Store, rank: int, size: int, algorithm: str, timeout: Any,
               chunk_bytes: Any, host_id: Optional[str], uid: str) -> None:
        # The engine checks the arguments (one rank's invalid one fails every rank's constructor).
        nccl = None  # made at the first CUDA call, if any
        if dist.is_nccl_available():
            nccl = lambda *args: _groups.nccl_group(*args, name=f"fastallreduce-{uid}")  # noqa: E731
        self._c = _C.Communicator(store, rank, size, _groups.gloo_group, timeout=timeout, chunk_bytes=chunk_bytes,
                                  algorithm=algorithm, host_id=host_id, name=uid, make_nccl=nccl)
        self.algorithm = algorithm.name if isinstance(algorithm, _C.Algo) else algorithm
        self.timeout = timedelta(milliseconds=self._c.config["timeout_ms"])
        self.uid = uid
        self.rank, self.size = rank, size
        self.host_of_rank = list(self._c.host_of_rank)
        self.local_ranks = list(self._c.local_ranks)
        self.num_hosts = self._c.num_hosts
        self.uniform_hosts = self._c.uniform_hosts
        self.config = dict(self._c.config)
        self._algo = algorithm if isinstance(algorithm, _C.Algo) else _C.Algo.__members__[algorithm]
        with _live_lock:
            _live.add(self)
        log.debug("Communicator rank %d/%d hosts=%d local=%s algorithm=%s cfg=%s", self.rank, self.size,
                  self.num_hosts, self.local_ranks, algorithm, self.config)

    # -- collectives -------------------------------------------------------------------
    @overload
    def allreduce(self, tensor: torch.Tensor, op: Union[str, dist.ReduceOp] = ..., *,
                  out: Optional[torch.Tensor] = ..., async_op: Literal[False] = ...,
                  algorithm: Optional[str] = ..., account: bool = ...) -> torch.Tensor: ...

    @overload
    def allreduce(self, tensor: torch.Tensor, op: Union[str, dist.ReduceOp] = ..., *,
                  out: Optional[torch.Tensor] = ..., async_op: Literal[True],
                  algorithm: Optional[str] = ..., account: bool = ...) -> "Future[torch.Tensor]": ...

    def allreduce(self, tensor: torch.Tensor, op: Union[str, dist.ReduceOp] = "sum", *,
                  out: Optional[torch.Tensor] = None, async_op: bool = False,
                  algorithm: Optional[str] = None, account: bool = False) -> Union[torch.Tensor, "Future[torch.Tensor]"]:
        """Allreduce ``tensor`` across the group.

        Returns the result tensor (``tensor`` itself in place, or ``out``), or with
        ``async_op=True`` a ``torch.futures.Future`` that completes with it. The inputs must not
        be modified until the future completes.

        op: "sum", "avg", "product", "max", "min" (or torch.distributed.ReduceOp). avg on integer
        dtypes raises TypeError. max/min propagate NaN like torch.maximum/minimum. float16 and
        bfloat16 are computed in float32 on shared memory; the point-to-point algorithms round at
        each hop, and divide before summing for avg (no overflow where the average fits).

        algorithm: one of :data:`ALGORITHMS` for this call instead of the communicator's own; every
        rank must pass the same (a difference is a :class:`MismatchError`).

        account: count this call (CPU tensors) in :meth:`accounted`, the totals the DDP hook's
        per-step statistics are taken from.
        """
        return self._run(_C.Kind.allreduce, tensor, out, op, 0, self._algo if algorithm is None else algorithm, async_op,
                         account)

    all_reduce = allreduce  # torch.distributed's spelling

    @overload
    def broadcast(self, tensor: torch.Tensor, src: int = ..., *, async_op: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def broadcast(self, tensor: torch.Tensor, src: int = ..., *,
                  async_op: Literal[True]) -> "Future[torch.Tensor]": ...

    def broadcast(self, tensor: torch.Tensor, src: int = 0, *,
                  async_op: bool = False) -> Union[torch.Tensor, "Future[torch.Tensor]"]:
        """Copies ``tensor`` of group rank ``src`` into ``tensor`` on every rank (in place).

        Returns ``tensor``, or with ``async_op=True`` a Future that completes with it.
        """
        return self._run(_C.Kind.broadcast, tensor, None, "sum", src, self._algo, async_op)

    @overload
    def all_gather(self, output: torch.Tensor, input: torch.Tensor, *,
                   async_op: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def all_gather(self, output: torch.Tensor, input: torch.Tensor, *,
                   async_op: Literal[True]) -> "Future[torch.Tensor]": ...

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, *,
                   async_op: bool = False) -> Union[torch.Tensor, "Future[torch.Tensor]"]:
        """Concatenates every rank's ``input`` (flattened, in group-rank order) into ``output``,
        which must hold ``size * input.numel()`` elements of the same dtype (the layout of
        ``torch.distributed.all_gather_into_tensor``). Returns ``output`` (or a Future of it).
        """
        return self._run(_C.Kind.allgather, input, output, "sum", 0, self._algo, async_op)

    @overload
    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, op: Union[str, dist.ReduceOp] = ..., *,
                       async_op: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, op: Union[str, dist.ReduceOp] = ..., *,
                       async_op: Literal[True]) -> "Future[torch.Tensor]": ...

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, op: Union[str, dist.ReduceOp] = "sum", *,
                       async_op: bool = False) -> Union[torch.Tensor, "Future[torch.Tensor]"]:
        """Reduces ``input`` (``size * output.numel()`` elements) across the group with ``op`` and
        leaves block ``rank`` of the result in ``output`` (the layout of
        ``torch.distributed.reduce_scatter_tensor``). Returns ``output`` (or a Future of it).
        """
        return self._run(_C.Kind.reduce_scatter, input, output, op, 0, self._algo, async_op)

    def _run(self, kind: "_C.Kind", input: Any, output: Any, op: Any, root: Any, algo: Any, async_op: bool,
             account: bool = False):
        # The object the result is written into, given back as it was given (arrays.py).
        result = output if output is not None else input
        try:
            input, from_array = as_tensor(input, "input", written=output is None)
            if output is not None:
                output, out_array = as_tensor(output, "output", written=True)
                from_array = from_array or out_array
        except (TypeError, ValueError) as e:
            # Rejected here: the engine takes the call's number and tells the peers that made it.
            self._c.reject(type(e) is TypeError, str(e))
            raise
        # The engine checks op, root and algorithm (rejecting the call on every rank if one is bad).
        done = self._c.run(kind, input, output, op, root, algo, bool(async_op), account)
        if not from_array or isinstance(result, torch.Tensor):
            return done
        return ArrayFuture(done, result) if async_op else result

    # -- introspection -----------------------------------------------------------------
    def accounted(self) -> tuple:
        """Totals over the calls made with ``account=True`` since construction: (ops, bytes,
        busy_ns: the sum of each call's time from submission to completion, bytes_copied_in,
        last_done_ns: when the latest completed, on :func:`time.monotonic_ns`'s clock)."""
        return self._c.accounted()

    def choose(self, nbytes: int) -> str:
        """The algorithm ``auto`` picks for a message of ``nbytes`` (same on every rank)."""
        return self._c.choose(nbytes)

    @property
    def last_algorithm(self) -> str:
        """The algorithm the most recent collective ran with."""
        return self._c.last_algorithm

    @property
    def aborted(self) -> bool:
        """Whether a fault (here or on a peer) or :meth:`abort` ended this communicator."""
        return self._c.aborted

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued collectives (each bounded by the timeout) and stop the worker thread."""
        self._c.close()

    def abort(self, reason: str = "aborted by user") -> None:
        """Fail running and queued collectives here and, through the store, on every rank."""
        self._c.abort(reason)
        self._c.close()

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Communicator(rank={self.rank}, size={self.size}, hosts={self.num_hosts}, "
                f"algorithm={self.algorithm!r})")


@atexit.register
def _close_all() -> None:
    # Drain and close before interpreter teardown, so no worker thread outlives Python.
    with _live_lock:
        comms = list(_live)
    for c in comms:
        try:
            c._c.close()  # a no-op in a forked child (the engine knows)
        except Exception:  # noqa: BLE001 - never raise at exit
            pass
