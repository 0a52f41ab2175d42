"""The Communicator: fastallreduce's allreduce over a torch.distributed process group."""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import weakref
from datetime import timedelta
from typing import Any, Optional, Union

import torch
import torch.distributed as dist

from . import _C

log = logging.getLogger("fastallreduce")
if os.environ.get("FASTALLREDUCE_LOG", "").lower() == "debug":
    logging.basicConfig()
    log.setLevel(logging.DEBUG)

#: Algorithm names accepted by ``Communicator(algorithm=...)`` and ``allreduce(algorithm=...)``.
ALGORITHMS = ("auto", "ring", "halving_doubling", "shm", "hierarchical")
_ALGO_CODE = {name: i for i, name in enumerate(ALGORITHMS)}

#: Reduce ops accepted as strings; torch.distributed.ReduceOp values work too.
OPS = ("sum", "avg", "product", "max", "min")
_OP_CODE: dict[Any, int] = {name: i for i, name in enumerate(OPS)}
_OP_CODE.update({dist.ReduceOp.SUM: 0, dist.ReduceOp.AVG: 1, dist.ReduceOp.PRODUCT: 2,
                 dist.ReduceOp.MAX: 3, dist.ReduceOp.MIN: 4})

# Collective codes of the engine's header (csrc/engine/header.h, Kind).
_KIND_ALLGATHER, _KIND_REDUCE_SCATTER, _KIND_BROADCAST = 1, 2, 3

# Cost-model defaults (see README "Choosing an algorithm"): per-message latency and
# point-to-point bandwidth of gloo over loopback, measured on the 2-core development machine.
_DEFAULTS = {
    "FASTALLREDUCE_ALPHA_US": 60.0,
    "FASTALLREDUCE_BETA_GBPS": 1.0,
    "FASTALLREDUCE_CHUNK_BYTES": 512 * 1024,
    "FASTALLREDUCE_WINDOW": 4,
    "FASTALLREDUCE_SHM_SLOT_BYTES": 4 << 20,
    "FASTALLREDUCE_SHM_ONESHOT_BYTES": 32 * 1024,
    "FASTALLREDUCE_SHM_CHUNK_BYTES": 512 * 1024,
    "FASTALLREDUCE_WORKER_IDLE": 1,
}
_DEFAULT_TIMEOUT = timedelta(minutes=30)  # torch.distributed's default for gloo

_live: "weakref.WeakSet[Communicator]" = weakref.WeakSet()
_live_lock = threading.Lock()
_made: dict = {}  # communicators made by this process, per exact rank list


def _env_config() -> dict:
    cfg = {}
    for key, default in _DEFAULTS.items():
        raw = os.environ.get(key)
        cfg[key] = type(default)(raw) if raw else default
    return cfg


@contextlib.contextmanager
def _engine_errors():
    """The bindings report a missing path as RuntimeError("NotImplementedError: ..."): re-raise it
    as NotImplementedError."""
    try:
        yield
    except RuntimeError as e:
        if str(e).startswith("NotImplementedError: "):
            raise NotImplementedError(str(e)[len("NotImplementedError: "):]) from None
        raise


def host_identity() -> str:
    """This host's identity: hostname plus kernel boot id (same on every process of a host)."""
    boot = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}"


def _op_code(op: Any) -> int:
    try:
        return _OP_CODE[op]
    except (KeyError, TypeError):
        pass
    if isinstance(op, dist.ReduceOp):  # a ReduceOp instance rather than the RedOpType value
        for k, v in _OP_CODE.items():
            if not isinstance(k, str) and op == k:
                return v
    raise ValueError(f"fastallreduce: unsupported reduce op {op!r}; use one of {OPS} or the matching torch.distributed.ReduceOp")


class Communicator:
    """Allreduce over the ranks of a torch.distributed process group.

    Creating one is a collective over ``group``: every member must construct it, in the same
    order relative to other collectives. It makes its own gloo group over the same ranks, so its
    traffic never interleaves with DDP's or the user's collectives on ``group``.

    Collectives run in the order they are issued (which must be the same order on every rank).
    A synchronous call with nothing queued runs on the calling thread (GIL released); async
    calls run on the communicator's worker thread.

    Faults are errors on every rank, never hangs: a mismatched call (size, dtype, op,
    algorithm) raises :class:`MismatchError`; a rank that dies or stops calling makes the others
    raise :class:`CommTimeoutError` / :class:`CommError` naming the ranks that did not arrive.
    After a fault the communicator is aborted and further calls raise :class:`ClosedError`.

    Args:
        group: the process group (None: the default group).
        algorithm: "auto", "ring" or "halving_doubling" ("shm"/"hierarchical" where available).
        timeout: per-collective timeout (default: the default group's timeout).
        chunk_bytes: pipeline segment size of the point-to-point algorithms.
        host_id: override this process's host identity (tests use it to simulate hosts).
    """

    def __init__(self, group: Optional[dist.ProcessGroup] = None, algorithm: str = "auto", *,
                 timeout: Optional[timedelta] = None, chunk_bytes: Optional[int] = None,
                 host_id: Optional[str] = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("fastallreduce.Communicator needs torch.distributed.init_process_group() first")
        if algorithm not in _ALGO_CODE:
            raise ValueError(f"fastallreduce: unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")
        if timeout is not None and not isinstance(timeout, timedelta):
            raise TypeError(f"fastallreduce: timeout must be a datetime.timedelta, got {type(timeout).__name__}")
        if chunk_bytes is not None and (not isinstance(chunk_bytes, int) or chunk_bytes < 64):
            raise ValueError(f"fastallreduce: chunk_bytes must be an int >= 64, got {chunk_bytes!r}")
        user_group = group if group is not None else dist.group.WORLD
        ranks = dist.get_process_group_ranks(user_group)
        if dist.get_rank() not in ranks:
            raise ValueError("fastallreduce: this process is not a member of the given group")
        if timeout is None:
            timeout = _DEFAULT_TIMEOUT
            try:
                timeout = dist.distributed_c10d._get_default_group().options._timeout  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - older/newer torch: keep torch's documented default
                pass
        self.group = user_group
        # Our own gloo backend over the same ranks, made directly rather than with dist.new_group:
        # new_group names groups from a per-process counter, which diverges across ranks as soon as
        # some subset creates a group, and then later groups deadlock. The name here depends only on
        # the ranks and on how many communicators this process made over exactly these ranks,
        # which agree on every member because construction is collective.
        key = "_".join(map(str, ranks))
        with _live_lock:
            _made[key] = _made.get(key, 0) + 1
            uid = f"{hashlib.sha1(key.encode()).hexdigest()[:12]}-{_made[key]}"
        store = dist.PrefixStore(f"fastallreduce/{uid}/", dist.distributed_c10d._get_default_store())
        self._start(store, ranks.index(dist.get_rank()), len(ranks), algorithm, timeout, chunk_bytes, host_id, uid,
                    global_ranks=ranks)

    @classmethod
    def _from_store(cls, store: dist.Store, rank: int, size: int, *, algorithm: str = "auto",
                    timeout: timedelta = _DEFAULT_TIMEOUT, uid: str = "backend") -> "Communicator":
        """A Communicator over ``size`` ranks that rendezvous through ``store`` (private to it).

        For the torch.distributed backend, which runs inside ``init_process_group`` where there is
        no default group yet. Collective over the ``size`` members.
        """
        if algorithm not in _ALGO_CODE:
            raise ValueError(f"fastallreduce: unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")
        self = cls.__new__(cls)
        self.group = None
        self._start(store, rank, size, algorithm, timeout, None, None, uid)
        return self

    def _start(self, store: dist.Store, rank: int, size: int, algorithm: str, timeout: timedelta,
               chunk_bytes: Optional[int], host_id: Optional[str], uid: str,
               global_ranks: Optional[list] = None) -> None:
        """Exchanges host identities through ``store`` (private to this communicator) and starts
        the engine. Collective over the ``size`` members."""
        self._pid = os.getpid()
        self.algorithm = algorithm
        self.timeout = timeout
        self.uid = uid
        info = {"host": host_id or os.environ.get("FASTALLREDUCE_HOST_ID") or host_identity(),
                "pid": os.getpid(), "cfg": _env_config()}
        store.set(f"info/{rank}", json.dumps(info))
        store.wait([f"info/{r}" for r in range(size)], timeout)
        infos = [json.loads(store.get(f"info/{r}")) for r in range(size)]
        # Every rank uses rank 0's configuration, so that algorithm choices agree everywhere.
        cfg = infos[0]["cfg"]
        if chunk_bytes is not None:
            cfg["FASTALLREDUCE_CHUNK_BYTES"] = chunk_bytes
        self.rank, self.size = rank, size
        hosts: list[str] = []
        for i in infos:
            if i["host"] not in hosts:
                hosts.append(i["host"])
        self.host_of_rank = [hosts.index(i["host"]) for i in infos]
        self.local_ranks = [r for r in range(size) if self.host_of_rank[r] == self.host_of_rank[rank]]
        self.num_hosts = len(hosts)
        sizes = [self.host_of_rank.count(h) for h in range(self.num_hosts)]
        self.uniform_hosts = len(set(sizes)) == 1
        threads = max(1, (os.cpu_count() or 1) // len(self.local_ranks))
        # Gloo closes every connection when one of its own waits times out; give it more time than
        # ours so that the communicator's deadline (which reports the missing ranks) fires first.
        transport_timeout = timeout * 2 + timedelta(seconds=30)
        self._backend = dist.ProcessGroupGloo(dist.PrefixStore("p2p/", store), rank, size, timeout=transport_timeout)
        # Cross-host backend of the ranks with my local index (one per index, all used at once by
        # the hierarchical algorithm); only its members make it.
        self._cross = None
        local_index = self.local_ranks.index(rank)
        if self.num_hosts > 1 and self.uniform_hosts and len(self.local_ranks) > 1:
            host = self.host_of_rank[rank]
            self._cross = dist.ProcessGroupGloo(dist.PrefixStore(f"cross/{local_index}/", store), host,
                                                self.num_hosts, timeout=transport_timeout)
        self._c = _C.Communicator(self._backend, store, int(timeout.total_seconds() * 1000),
                                  int(cfg["FASTALLREDUCE_CHUNK_BYTES"]), int(cfg["FASTALLREDUCE_WINDOW"]),
                                  threads, float(cfg["FASTALLREDUCE_ALPHA_US"]),
                                  float(cfg["FASTALLREDUCE_BETA_GBPS"]), uid,
                                  local_index, self.local_ranks, [infos[r]["pid"] for r in self.local_ranks],
                                  self.num_hosts, self.uniform_hosts, self._cross,
                                  int(cfg["FASTALLREDUCE_SHM_SLOT_BYTES"]), int(cfg["FASTALLREDUCE_SHM_ONESHOT_BYTES"]),
                                  int(cfg["FASTALLREDUCE_SHM_CHUNK_BYTES"]), bool(cfg["FASTALLREDUCE_WORKER_IDLE"]))
        if algorithm != "auto" and not self._c.supports(_ALGO_CODE[algorithm]):
            self._c.close()
            raise ValueError(f"fastallreduce: algorithm={algorithm!r} cannot run on this topology "
                             f"({self.num_hosts} hosts); 'shm' needs every rank on one host")
        self._algo = _ALGO_CODE[algorithm]
        self.config = cfg
        with _live_lock:
            _live.add(self)
        log.debug("Communicator rank %d/%d hosts=%d local=%s algorithm=%s cfg=%s", self.rank, self.size,
                  self.num_hosts, self.local_ranks, algorithm, cfg)

    # -- collectives -------------------------------------------------------------------
    def allreduce(self, tensor: torch.Tensor, op: Union[str, dist.ReduceOp] = "sum", *,
                  out: Optional[torch.Tensor] = None, async_op: bool = False,
                  algorithm: Optional[str] = None):
        """Allreduce ``tensor`` across the group.

        Returns the result tensor (``tensor`` itself in place, or ``out``), or with
        ``async_op=True`` a ``torch.futures.Future`` that completes with it. The inputs must not
        be modified until the future completes.

        op: "sum", "avg", "product", "max", "min" (or torch.distributed.ReduceOp). avg on integer
        dtypes raises TypeError. max/min propagate NaN like torch.maximum/minimum. float16 and
        bfloat16 are computed in float32; the point-to-point algorithms round at each hop.
        """
        self._check_process()
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"fastallreduce: expected a torch.Tensor, got {type(tensor).__name__}")
        if out is not None and not isinstance(out, torch.Tensor):
            raise TypeError(f"fastallreduce: out must be a torch.Tensor, got {type(out).__name__}")
        algo = self._algo if algorithm is None else self._algo_code(algorithm)
        code = _op_code(op)
        with _engine_errors():
            if async_op:
                return self._c.allreduce_async(tensor, out, code, algo)
            return self._c.allreduce(tensor, out, code, algo)

    def broadcast(self, tensor: torch.Tensor, src: int = 0, *, async_op: bool = False):
        """Copies ``tensor`` of group rank ``src`` into ``tensor`` on every rank (in place).

        Returns ``tensor``, or with ``async_op=True`` a Future that completes with it.
        """
        return self._collective(_KIND_BROADCAST, tensor, tensor, "sum", src, async_op)

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, *, async_op: bool = False):
        """Concatenates every rank's ``input`` (flattened, in group-rank order) into ``output``,
        which must hold ``size * input.numel()`` elements of the same dtype (the layout of
        ``torch.distributed.all_gather_into_tensor``). Returns ``output`` (or a Future of it).
        """
        return self._collective(_KIND_ALLGATHER, input, output, "sum", 0, async_op)

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, op: Union[str, dist.ReduceOp] = "sum", *,
                       async_op: bool = False):
        """Reduces ``input`` (``size * output.numel()`` elements) across the group with ``op`` and
        leaves block ``rank`` of the result in ``output`` (the layout of
        ``torch.distributed.reduce_scatter_tensor``). Returns ``output`` (or a Future of it).
        """
        return self._collective(_KIND_REDUCE_SCATTER, input, output, op, 0, async_op)

    def _collective(self, kind: int, input: torch.Tensor, output: torch.Tensor, op: Any, root: int, async_op: bool):
        self._check_process()
        for name, t in (("input", input), ("output", output)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"fastallreduce: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not isinstance(root, int) or isinstance(root, bool):
            raise TypeError(f"fastallreduce: src must be an int, got {type(root).__name__}")
        code = _op_code(op)
        with _engine_errors():
            if self._c.supports_gather_family():  # shared memory: every rank on one host
                if async_op:
                    return self._c.collective_async(kind, input, output, code, root)
                return self._c.collective(kind, input, output, code, root)
            self._c.check_collective(kind, input, output, code, root)
        return self._via_allreduce(kind, input, output, code, root, async_op)

    def _via_allreduce(self, kind: int, input: torch.Tensor, output: torch.Tensor, code: int, root: int,
                       async_op: bool):
        # Across hosts, the family runs as one allreduce on the engine (same order, header checks,
        # timeouts and abort as every other call). Gathers and broadcasts sum bytes into zeros,
        # which copies every bit exactly (x + 0 wraps nowhere); reduce_scatter reduces it all
        # and keeps this rank's block.
        if kind == _KIND_REDUCE_SCATTER:
            work = input.detach().clone()
            n = output.numel()

            def finish(t: torch.Tensor) -> torch.Tensor:
                output.detach().view(-1).copy_(t.view(-1)[self.rank * n:(self.rank + 1) * n])
                return output
        else:
            work = output.detach().reshape(-1).view(torch.uint8)
            if kind == _KIND_BROADCAST:
                if self.rank != root:
                    work.zero_()
            else:
                n = input.numel() * input.element_size()
                work.zero_()  # input and output never overlap (checked)
                work[self.rank * n:(self.rank + 1) * n].copy_(input.detach().reshape(-1).view(torch.uint8))

            def finish(t: torch.Tensor) -> torch.Tensor:
                return output
        red = code if kind == _KIND_REDUCE_SCATTER else _OP_CODE["sum"]
        if async_op:
            return self._c.allreduce_async(work, None, red, self._algo).then(lambda f: finish(f.value()))
        return finish(self._c.allreduce(work, None, red, self._algo))

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("fastallreduce: a Communicator cannot be used in a forked child process; "
                               "create a new one after init_process_group() in the child")

    @staticmethod
    def _algo_code(name: str) -> int:
        try:
            return _ALGO_CODE[name]
        except KeyError:
            raise ValueError(f"fastallreduce: unknown algorithm {name!r}; choose from {ALGORITHMS}") from None

    # -- introspection -----------------------------------------------------------------
    def choose(self, nbytes: int) -> str:
        """The algorithm ``auto`` picks for a message of ``nbytes`` (same on every rank)."""
        return self._c.choose(nbytes)

    @property
    def last_algorithm(self) -> str:
        """The algorithm the most recent collective ran with."""
        return self._c.last_algorithm

    @property
    def aborted(self) -> bool:
        return self._c.aborted

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued collectives (each bounded by the timeout) and stop the worker thread."""
        if os.getpid() != self._pid:
            return
        self._c.close()

    def abort(self, reason: str = "aborted by user") -> None:
        """Fail running and queued collectives here and, through the store, on every rank."""
        self._c.abort(reason)
        self._c.close()

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
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
            if os.getpid() == c._pid:
                c._c.close()
        except Exception:  # noqa: BLE001 - never raise at exit
            pass
