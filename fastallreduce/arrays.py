"""Arrays of other libraries in :class:`~fastallreduce.Communicator` calls: anything that speaks
DLPack (NumPy on the CPU, CuPy on the GPU, ...), shared with torch without a copy.

A collective called with such arrays returns the array it wrote (the same object it was given),
or, with ``async_op=True``, an :class:`ArrayFuture` of it. The result is written in place, so an
array that receives a result must be writable. On CUDA, torch.from_dlpack orders torch's current
stream after the array library's, and the result is ready on torch's current stream as for a
tensor (CuPy's and torch's default streams are the same legacy default stream).
"""
from typing import Any, Callable, Tuple

import torch
from torch.futures import Future

__all__ = ["ArrayFuture", "as_tensor"]


def as_tensor(x: Any, name: str, written: bool) -> Tuple[torch.Tensor, bool]:
    """``(tensor sharing x's memory, whether x was an array rather than a tensor)``.

    ``written``: the call writes its result into ``x``. Raises TypeError for an object that is
    neither a tensor nor DLPack-capable, ValueError for a read-only array that would be written.
    """
    if isinstance(x, torch.Tensor):
        return x, False
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"fastallreduce: {name} must be a torch.Tensor or a DLPack-capable array "
                        f"(NumPy, CuPy), got {type(x).__name__}")
    flags = getattr(x, "flags", None)
    if written and flags is not None and not getattr(flags, "writeable", True):
        raise ValueError(f"fastallreduce: {name} is a read-only array, and the result is written into it; "
                         "pass a writable array (e.g. a copy)")
    try:
        return torch.from_dlpack(x), True
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"fastallreduce: {name} ({type(x).__name__}) cannot be shared through DLPack: {e}") from None


class ArrayFuture:
    """The Future of a collective called with arrays: :meth:`wait` and :meth:`value` return the
    array the result was written into. ``future`` is the underlying ``torch.futures.Future`` (its
    value is the tensor sharing the array's memory)."""

    def __init__(self, future: Future, array: Any) -> None:
        self.future = future
        self._array = array

    def done(self) -> bool:
        """Whether the collective has completed."""
        return self.future.done()

    def wait(self) -> Any:
        """Waits for the collective (raising its error, if any) and returns the array."""
        self.future.wait()
        return self._array

    def value(self) -> Any:
        """The array of a completed collective (raises its error, if any)."""
        self.future.value()
        return self._array

    def add_done_callback(self, callback: Callable[["ArrayFuture"], None]) -> None:
        """Runs ``callback(self)`` once the collective has completed."""
        self.future.add_done_callback(lambda _: callback(self))
