"""fastallreduce: fast, trustworthy gradient allreduce and large-minibatch SGD for PyTorch.

    import fastallreduce as far
    comm = far.Communicator(group=None, algorithm="auto")
    comm.allreduce(tensor, op="sum")                  # in place; returns tensor
    comm.allreduce(tensor, op="sum", out=result)      # out of place
    fut = comm.allreduce(tensor, op="avg", async_op=True)
"""
import torch  # noqa: F401  (loads libc10 and libtorch before the extension)

from ._C import ClosedError, CommError, CommTimeoutError, MismatchError  # noqa: F401
from .communicator import ALGORITHMS, OPS, Communicator  # noqa: F401
from . import ddp  # noqa: F401,E402
from . import backend  # noqa: F401,E402  (registers the "fastallreduce" torch.distributed backend)

__version__ = "0.1.0"
__all__ = [
    "Communicator", "CommError", "MismatchError", "CommTimeoutError", "ClosedError", "ALGORITHMS", "OPS",
]
