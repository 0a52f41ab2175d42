"""Every environment variable fastallreduce reads, declared once: name, type, range, default,
who reads it, whether every rank must agree, and what it does.

The engine's knobs (C++) take their names and ranges from ``csrc/common/knobs.h``, which
``scripts/gen_knobs.py`` generates from this table, as it generates the README's and
``docs/configuration.md``'s tables (``tests/test_knobs.py`` fails when one is stale, and on any
read of a ``FASTALLREDUCE_*`` variable that does not go through here). Python reads its own
knobs with :func:`value`. Variables other tools define and fastallreduce reads or sets are
listed in :data:`EXTERNAL`.

This module imports nothing from the package (``setup.py`` loads it by path, before the build).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

#: Who reads a knob: the C++ engine (agreed: rank 0's value applies on every rank; local: each
#: process its own), the Python package, the build, the scripts, the tests.
READERS = ("engine", "engine-local", "python", "build", "scripts", "tests")


@dataclass(frozen=True)
class Knob:
    """One ``FASTALLREDUCE_*`` variable."""
    name: str
    kind: str                       # "int", "float", "choice" or "text"
    default: str                    # as documented (the value when unset or empty)
    doc: str
    reader: str                     # one of READERS
    lo: Optional[float] = None      # inclusive range of "int" and "float"
    hi: Optional[float] = None
    choices: Tuple[str, ...] = ()   # the values of "choice" (case-insensitive)
    shown_default: str = ""         # the default as the tables show it, when not the raw value
    user: bool = True               # in the README's table (False: for developers of fastallreduce)
    shared: bool = False            # agreed across ranks although another reader reads it

    @property
    def agreed(self) -> bool:
        """Whether every rank uses the same value (the engine takes rank 0's)."""
        return self.reader == "engine" or self.shared

    @property
    def key(self) -> str:
        """The name without the ``FASTALLREDUCE_`` prefix (the C++ constant's name)."""
        return self.name[len("FASTALLREDUCE_"):]


_GiB = float(1 << 30)
KNOBS: Tuple[Knob, ...] = (
    # The engine's configuration (csrc/engine/config.cpp), agreed across ranks.
    Knob("FASTALLREDUCE_ALPHA_US", "float", "60", "point-to-point latency (µs) in the `auto` cost model",
         "engine", 1e-3, 1e7),
    Knob("FASTALLREDUCE_BETA_GBPS", "float", "1.0", "point-to-point bandwidth (GB/s) in the `auto` cost model",
         "engine", 1e-4, 1e4),
    Knob("FASTALLREDUCE_SHM_STAGE_US", "float", "25",
         "fixed cost of one hierarchical chunk's shared-memory stages (µs), cost model", "engine", 0, 1e7),
    Knob("FASTALLREDUCE_SHM_GBPS", "float", "2.5",
         "bandwidth of the hierarchical shared-memory stages (GB/s), cost model", "engine", 1e-4, 1e4),
    Knob("FASTALLREDUCE_CHUNK_BYTES", "int", "524288", "pipeline segment of ring / halving-doubling",
         "engine", 64, _GiB),
    Knob("FASTALLREDUCE_WINDOW", "int", "4", "receives posted ahead (ring / halving-doubling)", "engine", 1, 64),
    Knob("FASTALLREDUCE_SHM_SLOT_BYTES", "int", "4194304", "shared-memory slot (two per rank) on one host",
         "engine", 4096, _GiB, shown_default="4 MiB"),
    Knob("FASTALLREDUCE_HIER_SLOT_BYTES", "int", "16777216",
         "shared-memory slot when the ranks span hosts: the hierarchical path's chunk", "engine", 4096, _GiB,
         shown_default="16 MiB"),
    Knob("FASTALLREDUCE_SHM_ONESHOT_BYTES", "int", "32768",
         "one-shot threshold (doubled with two ranks on the host; at most half a slot)", "engine", 0, _GiB),
    Knob("FASTALLREDUCE_SHM_CHUNK_BYTES", "int", "524288",
         "chunk of the flat shared-memory path above one slot", "engine", 4096, _GiB, shown_default="512 KiB"),
    Knob("FASTALLREDUCE_WORKER_IDLE", "int", "0",
         "`1`: the async worker thread runs under `SCHED_IDLE` (other busy processes starve it)", "engine", 0, 1),
    # Read by the engine, each process its own.
    Knob("FASTALLREDUCE_HOST_ID", "text", "", "host identity, replacing hostname, boot id, pid namespace and "
         "/dev/shm device (simulates hosts)", "engine-local", shown_default="detected"),
    Knob("FASTALLREDUCE_LOG", "text", "", "`debug`: log each collective and the algorithm chosen (other "
         "values: off)", "engine-local", shown_default="off"),
    Knob("FASTALLREDUCE_FAILPOINT", "text", "", "tests: end the process (exit 86) at the named point",
         "engine-local", shown_default="none", user=False),
    # The Python package.
    Knob("FASTALLREDUCE_BACKEND_ALGORITHM", "choice", "auto", "the torch backend's engine algorithm",
         "python", choices=("auto", "ring", "halving_doubling", "shm", "hierarchical"), shared=True),
    Knob("FASTALLREDUCE_CUDA_SGD", "choice", "torch",
         "`SGD`'s CUDA path: `torch` (torch's fused / foreach SGD) or `kernel` (ours)", "python",
         choices=("torch", "kernel")),
    # The build and the scripts.
    Knob("FASTALLREDUCE_CUDA", "choice", "auto", "build the CUDA sources (`1` / `0` force)", "build",
         choices=("auto", "1", "0", "on", "off", "true", "false", "yes", "no")),
    Knob("FASTALLREDUCE_TORCH", "text", "torch==2.14.1",
         "the torch the scripts install (`installed`: the one `$PYTHON` has)", "scripts"),
    Knob("FASTALLREDUCE_VENV", "text", ".venv", "the scripts' virtual environment", "scripts"),
    Knob("FASTALLREDUCE_DEPS_ONLY", "choice", "0", "`1`: the scripts install the dependencies, no build",
         "scripts", choices=("0", "1")),
    Knob("FASTALLREDUCE_OLDEST_TORCH", "text", "torch==2.11.0", "the torch `scripts/test_oldest_torch.sh` tests",
         "scripts"),
    Knob("FASTALLREDUCE_SOAK_OPS", "int", "150", "operations of `tests/test_soak.py`", "tests", 1, 1e9),
)

#: Variables other tools define that fastallreduce reads or sets: name -> where and why.
EXTERNAL = {
    "RANK": "torchrun: this process's rank (the benchmarks run on a launched job's ranks)",
    "WORLD_SIZE": "torchrun: the number of ranks",
    "LOCAL_RANK": "torchrun: the rank on this host (set for DeepSpeed's anchor)",
    "LOCAL_SIZE": "DeepSpeed: the ranks on this host (set for its anchor)",
    "MASTER_ADDR": "torchrun: the store's host",
    "MASTER_PORT": "torchrun: the store's port",
    "GLOO_SOCKET_IFNAME": "Gloo: the interface the transport uses (the scripts and rank pools set `lo`)",
    "OMP_NUM_THREADS": "OpenMP: threads per process (the scripts set 1; the engine sizes its own kernel threads)",
    "CUDA_HOME": "the CUDA toolkit the build uses (the scripts set /usr/local/cuda where nvcc is)",
    "TORCH_CUDA_ARCH_LIST": "the CUDA architectures the build compiles for",
    "MAX_JOBS": "torch's cpp_extension: parallel compile jobs",
    "CUDA_VISIBLE_DEVICES": "CUDA: the GPUs a process sees (the GPU check's ranks)",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "torch: set to 2 (clean up only) while the engine makes its NCCL group",
    "DS_ACCELERATOR": "DeepSpeed: `cpu` for its anchor",
    "PYTHON": "the scripts' interpreter",
    "PIP_FIND_LINKS": "pip: emptied by the support-window check (PyPI's wheels, not local ones)",
    "PIP_CONSTRAINT": "pip: `/dev/null` where the window check downloads a release past this machine's cap",
}

_BY_NAME = {k.name: k for k in KNOBS}


def knob(name: str) -> Knob:
    """The declaration of ``name`` (KeyError naming the known knobs when it is not one)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not a fastallreduce knob; known: {', '.join(_BY_NAME)}") from None


def _range(k: Knob) -> str:
    if k.kind == "choice":
        return "one of " + ", ".join(k.choices)
    if k.kind == "int":
        return f"an integer in [{int(k.lo)}, {int(k.hi)}]"
    return f"a number in [{k.lo:g}, {k.hi:g}]"


def parse(k: Knob, raw: str) -> Union[int, float, str]:
    """``raw`` as ``k``'s type, checked against its range; ValueError naming the variable if not."""
    text = raw.strip()
    if k.kind == "text":
        return text
    if k.kind == "choice":
        if text.lower() not in k.choices:
            raise ValueError(f"fastallreduce: {k.name}={raw!r} is not valid: it must be {_range(k)}")
        return text.lower()
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"fastallreduce: {k.name}={raw!r} is not a number; it must be {_range(k)}") from None
    if not math.isfinite(v) or v < k.lo or v > k.hi or (k.kind == "int" and v != math.floor(v)):
        raise ValueError(f"fastallreduce: {k.name}={raw!r} is out of range: it must be {_range(k)}")
    return int(v) if k.kind == "int" else v


def value(name: str, environ: Optional[dict] = None) -> Union[int, float, str]:
    """The knob's value in ``environ`` (default: this process's environment), typed and checked;
    its default when unset or empty."""
    k = knob(name)
    raw = (os.environ if environ is None else environ).get(name, "")
    return parse(k, raw if raw.strip() else k.default)


def is_set(name: str) -> bool:
    """Whether the knob is set to something other than an empty string."""
    knob(name)
    return bool(os.environ.get(name, "").strip())


def markdown_table(readers: Tuple[str, ...] = READERS, short: bool = False) -> str:
    """The table of the knobs read by ``readers``: variable, default, values, agreed, meaning
    (``short``: the knobs for users, variable, default and meaning only)."""
    if short:
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        rows += [f"| `{k.name}` | {k.shown_default or k.default} | {k.doc} |" for k in KNOBS
                 if k.reader in readers and k.user]
        return "\n".join(rows)
    rows = ["| variable | default | values | every rank the same | meaning |", "|---|---|---|---|---|"]
    for k in KNOBS:
        if k.reader not in readers:
            continue
        values = "text" if k.kind == "text" else _range(k).replace("one of ", "").replace("an integer in ", "integer ")
        values = values.replace("a number in ", "number ")
        shown = k.shown_default or k.default
        rows.append(f"| `{k.name}` | {shown} | {values} | {'yes (rank 0’s)' if k.agreed else 'no'} | {k.doc} |")
    return "\n".join(rows)
