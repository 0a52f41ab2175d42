"""Registered buffers: tensors whose memory every local rank's collectives read in place.

An allreduce normally copies each rank's input into the communicator's shared memory before
the ranks of a host reduce it. When every rank's input lives in memory the communicator gave
out (:meth:`Communicator.empty`) or took over (:meth:`Communicator.register`), and the call is
in place at the same offset on every rank, the ranks read each other's tensors directly and
nothing is copied in. Whether a call does is decided from the headers every rank exchanges
anyway, identically on every rank; a call where only some ranks' inputs are registered takes
the copying path everywhere. The sums (order included) are the same on both paths, so the bits
are too.

Registered memory is a shared-memory segment of its own per buffer. Its name leaves /dev/shm
once every local peer has mapped it (or when the communicator fails or closes); its memory
goes when the tensor and the communicator are both gone.
"""
from __future__ import annotations

import logging
import warnings
from typing import Dict, Optional, Sequence, Union

import torch

log = logging.getLogger("fastallreduce")
_warned: set = set()


def _foreign_memory(tensor: torch.Tensor) -> Optional[str]:
    """Why ``tensor``'s storage belongs to another owner, or None. Storages torch allocates itself
    are resizable and private; NumPy and DLPack imports, ``torch.frombuffer`` and mmapped files are
    not resizable, ``share_memory_()`` storages are shared: moving any of them would detach the
    tensor from the memory its owner keeps using."""
    if tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return None
    storage = tensor.untyped_storage()
    if storage.is_shared():
        return "its storage is shared memory (share_memory_() or a shared mmap)"
    if not storage.resizable():
        return "its storage is memory torch does not own (NumPy, DLPack, frombuffer or an mmapped file)"
    return None


class RegisteredBuffers:
    """The registered-buffer part of :class:`fastallreduce.Communicator` (a mixin)."""

    _c: object

    def empty(self, *size: Union[int, Sequence[int]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An uninitialised CPU tensor in registered memory (like ``torch.empty``).

        Not a collective: each rank makes its own. Where no other rank shares this host (or the
        registration table, 64 buffers per rank, is full) it is an ordinary tensor. The memory
        lives as long as the tensor, also past the communicator.
        """
        if len(size) == 1 and not isinstance(size[0], int):
            size = tuple(size[0])
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
            raise TypeError(f"fastallreduce: empty() takes int sizes, got {size!r}")
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"fastallreduce: dtype must be a torch.dtype, got {dtype!r}")
        return self._c.empty(list(size), dtype)  # type: ignore[attr-defined]

    def register(self, tensor: torch.Tensor) -> bool:
        """Moves ``tensor``'s storage into registered memory, contents included.

        Every tensor and view sharing that storage follows (``tensor.data_ptr()`` changes). Not
        a collective. Returns False, changing nothing, where it cannot (not a CPU tensor, an
        empty storage, no local peers, a full table), for a storage already registered, and for
        memory torch does not own (NumPy, DLPack, ``share_memory_()``, mmapped files: moving it
        would detach the tensor from its owner; a warning, once, and the debug log say why).
        No other thread may use the storage while this runs.
        """
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"fastallreduce: register() takes a tensor, got {type(tensor).__name__}")
        if self.is_registered(tensor):
            return False
        why = _foreign_memory(tensor)
        if why is not None:
            msg = f"fastallreduce: register() refuses a tensor whose memory torch does not own: {why}"
            log.debug(msg)
            if why not in _warned:  # once per reason and process
                _warned.add(why)
                warnings.warn(msg, stacklevel=2)
            return False
        return bool(self._c.register_storage(tensor))  # type: ignore[attr-defined]

    def is_registered(self, tensor: torch.Tensor) -> bool:
        """Whether all of ``tensor``'s elements lie in this communicator's registered memory."""
        return bool(self._c.is_registered(tensor))  # type: ignore[attr-defined]

    def stats(self) -> Dict[str, int]:
        """Counters since construction: ``bytes_copied_in`` (this rank's input bytes copied into
        shared memory by allreduce), ``copying_calls`` and ``zero_copy_calls`` (shared-memory
        allreduces of each kind) and ``registrations`` (live registered buffers)."""
        return dict(self._c.stats())  # type: ignore[attr-defined]
