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

from typing import Dict, Sequence, Union

import torch


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
        empty storage, no local peers, a full table) and for a storage already registered.
        No other thread may use the storage while this runs.
        """
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"fastallreduce: register() takes a tensor, got {type(tensor).__name__}")
        return bool(self._c.register_storage(tensor))  # type: ignore[attr-defined]

    def is_registered(self, tensor: torch.Tensor) -> bool:
        """Whether all of ``tensor``'s elements lie in this communicator's registered memory."""
        return bool(self._c.is_registered(tensor))  # type: ignore[attr-defined]

    def stats(self) -> Dict[str, int]:
        """Counters since construction: ``bytes_copied_in`` (this rank's input bytes copied into
        shared memory by allreduce), ``copying_calls`` and ``zero_copy_calls`` (shared-memory
        allreduces of each kind) and ``registrations`` (live registered buffers)."""
        return dict(self._c.stats())  # type: ignore[attr-defined]
