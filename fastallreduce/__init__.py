"""fastallreduce: fast, trustworthy gradient allreduce and large-minibatch SGD for PyTorch.

    import fastallreduce as far
    comm = far.Communicator(group=None, algorithm="auto")
    comm.allreduce(tensor, op="sum")                  # in place; returns tensor
    comm.allreduce(tensor, op="sum", out=result)      # out of place
    fut = comm.allreduce(tensor, op="avg", async_op=True)

Subpackages are reachable as attributes, as ``torch.optim`` is from ``torch``: ``far.ddp`` (DDP
hooks), ``far.fused`` (the update fused into the hook), ``far.optim`` (SGD and the
large-minibatch recipe), ``far.backend``, and, imported at first use, ``far.bench`` and
``far.launch``.

Importing the package needs no compiled extension: without ``fastallreduce._C`` (a fresh checkout)
``python3 -m fastallreduce.gpu_check`` still runs and builds it, and every other name raises an
ImportError that says how to build.
"""
import importlib
from typing import Any, List, Optional

import torch  # noqa: F401  (loads libc10 and libtorch before the extension)

_C_ERROR: Optional[ImportError] = None
try:
    from . import _C  # noqa: F401
except ImportError as _e:  # not built yet (a fresh checkout), or built against another torch
    _C_ERROR = _e
else:
    from ._C import ClosedError, CommError, CommTimeoutError, MismatchError  # noqa: F401
    from .communicator import ALGORITHMS, OPS, Communicator  # noqa: F401
    from . import optim  # noqa: F401,E402
    from . import ddp, fused  # noqa: F401,E402
    from . import backend  # noqa: F401,E402  (registers the "fastallreduce" torch.distributed backend)

    # The extension defines these exceptions without docstrings; the API page is made from docstrings.
    CommError.__doc__ = ("A collective failed on some rank: a peer died or the transport failed. The message names "
                         "the ranks that did not arrive; the communicator is aborted. Base of the others.")
    MismatchError.__doc__ = ("The ranks disagree on a call (kind, size, dtype, op, root or path), or a peer rejected "
                             "the call this rank made; raised on every rank that made it.")
    CommTimeoutError.__doc__ = ("A peer did not arrive within the communicator's timeout; the message names the ranks "
                                "that did not.")
    ClosedError.__doc__ = ("The communicator was closed or aborted (by a fault here or on a peer), or it is used in a "
                           "forked child.")

__version__ = "0.1.0"
__all__ = [
    "Communicator", "CommError", "MismatchError", "CommTimeoutError", "ClosedError", "ALGORITHMS", "OPS",
]

# Imported on first access: the benchmarks and the rank launcher are not needed to train.
_LAZY = ("bench", "launch")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if _C_ERROR is not None and not name.startswith("__"):
        # Without the extension only the modules that need no _C import (gpu_check, which builds it).
        raise ImportError(f"fastallreduce.{name} needs the compiled extension fastallreduce._C, which does not "
                          f"import here ({_C_ERROR}). Build it for this torch ({torch.__version__}) with "
                          "`pip install --no-build-isolation -e .` in the checkout, or run "
                          "`python3 -m fastallreduce.gpu_check`, which builds it first.") from _C_ERROR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
