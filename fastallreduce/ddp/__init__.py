"""Drop-in DDP communication hooks backed by fastallreduce.

    import fastallreduce
    state = fastallreduce.ddp.register(ddp_model)          # or, by hand:
    state = fastallreduce.ddp.HookState(ddp_model.process_group)
    ddp_model.register_comm_hook(state, fastallreduce.ddp.allreduce_hook)

Contract of :func:`allreduce_hook`: it returns at once with a ``torch.futures.Future`` that
completes with the bucket's gradients AVERAGED over the group (the sum divided by the group
size, as DDP's default hook does), with the buffer's shape and dtype. The reduction runs on the
communicator's worker thread while backprop continues; a CUDA bucket's runs on the communicator's
NCCL group, ordered after the work queued on the current stream, and the Future is CUDA-aware.

Zero-copy buckets: the first time the hook sees a CPU bucket, it moves the bucket's storage into
the Communicator's registered memory (:meth:`fastallreduce.Communicator.register`). DDP keeps
the same bucket tensor from step to step, and every tensor on that storage follows the move
(with ``gradient_as_bucket_view=True`` the parameters' ``.grad`` are such views), so every later
allreduce of that bucket reads the ranks' buckets in place instead of copying them into shared
memory. A bucket that cannot move (see :data:`ZERO_COPY_FALLBACKS`) keeps the copying path;
``stats()["bytes_copied_in"]`` shows what a step copied.

The package: :mod:`.hook` (the state and the per-bucket path), :mod:`.install` (registration on a
DDP model and its copies, the buffer broadcast) and :mod:`.fused_update` (the SGD update fused
into the hook: :func:`register_fused_optimizer`, :class:`FusedSGDState`, :func:`fused_sgd_hook`,
also importable from :mod:`fastallreduce.fused`).

Copies: ``copy.deepcopy(ddp_model)`` and ``torch.save(ddp_model)`` / ``torch.load`` work. As with
torch's PowerSGDState, the state is saved without its process-local parts (Communicator, process
group, lock); the copy's state makes its own Communicator at its first use (a collective: every
rank uses its copy at the same point, as it does with DDP). DDP rebuilds its reducer without the
comm hook when it is unpickled; :func:`register` puts the hook back on a copy before the copy's
first forward.
"""
from .fused_update import FusedSGDState, fused_sgd_hook, register_fused_optimizer
from .hook import ZERO_COPY_FALLBACKS, HookState, allreduce_hook
from .install import register

__all__ = ["HookState", "allreduce_hook", "register", "ZERO_COPY_FALLBACKS", "FusedSGDState", "fused_sgd_hook",
           "register_fused_optimizer"]
