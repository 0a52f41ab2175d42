"""DDP training runs executed on the ranks of a RankPool."""
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fastallreduce as far


IN_WIDE = 64  # input width of the wide model (buckets of 64-256 KiB with bucket_cap_mb=0.1)


class Net(nn.Module):
    def __init__(self, unused: bool = False, int_valued: bool = False, bn: bool = False, wide: bool = False):
        super().__init__()
        d, h = (IN_WIDE, 256) if wide else (16, 32)
        self.a = nn.Linear(d, h)
        # Buffers (running stats, an int64 counter) that DDP broadcasts before every forward.
        self.bn = nn.BatchNorm1d(h) if bn else None
        self.b = nn.Linear(h, h)
        self.c = nn.Linear(h, 4)
        self.unused = nn.Linear(4, 4) if unused else None
        if int_valued:
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randint(-2, 3, p.shape).float())

    def forward(self, x):
        h = self.a(x)
        h = torch.relu(self.bn(h) if self.bn is not None else h)
        h = torch.relu(self.b(h))
        return self.c(h)


def train(hook: bool, steps: int = 10, *, compression=None, gradient_as_bucket_view=False, static_graph=False,
          find_unused=False, unused=False, accumulate=1, bucket_cap_mb=0.002, group_ranks=None,
          uneven=False, int_valued=False, algorithm="auto", bn=False, buffers=True, device="cpu", wide=False,
          zero_copy=True):
    """Trains the same model with DDP; returns the final parameters and buffers (CPU copies, and hook stats)."""
    rank = dist.get_rank()
    group = dist.new_group(group_ranks) if group_ranks is not None else None
    if group_ranks is not None and rank not in group_ranks:
        return None
    torch.manual_seed(0)
    model = Net(unused=unused, int_valued=int_valued, bn=bn, wide=wide).to(device)
    ddp = DDP(model, process_group=group, gradient_as_bucket_view=gradient_as_bucket_view,
              static_graph=static_graph, find_unused_parameters=find_unused, bucket_cap_mb=bucket_cap_mb)
    state = (far.ddp.register(ddp, compression=compression, algorithm=algorithm, buffers=buffers, zero_copy=zero_copy)
             if hook else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05 if not int_valued else 2.0 ** -10, momentum=0.0 if int_valued else 0.9)
    g = torch.Generator().manual_seed(100 + rank)
    n_batches = steps * accumulate + (rank if uneven else 0)
    batches = []
    for _ in range(n_batches):
        if int_valued:
            x = torch.randint(-1, 2, (8, 16), generator=g).float()
        else:
            x = torch.randn(8, IN_WIDE if wide else 16, generator=g)
        batches.append(x.to(device))

    def step_loss(x):
        out = ddp(x)
        return out.sum() if int_valued else (out ** 2).mean()

    if uneven:
        from torch.distributed.algorithms.join import Join
        with Join([ddp]):
            for x in batches:
                opt.zero_grad()
                step_loss(x).backward()
                opt.step()
    else:
        for i in range(steps):
            opt.zero_grad()
            for j in range(accumulate):
                x = batches[i * accumulate + j]
                if j < accumulate - 1:
                    with ddp.no_sync():
                        step_loss(x).backward()
                else:
                    step_loss(x).backward()
            opt.step()
    params = [p.detach().cpu() for p in model.parameters()] + [b.cpu() for b in model.buffers()]
    stats = state.stats() if state is not None else None
    if state is not None:
        logging_data = ddp._get_ddp_logging_data()
        stats = dict(stats, comm_hook=logging_data.get("comm_hook"), buffer_syncs=state.buffer_syncs,
                     forwards=n_batches, zero_copy_fallbacks=dict(state.zero_copy_fallbacks),
                     grads_registered=[state.comm.is_registered(p.grad) for p in model.parameters()
                                       if p.grad is not None])
    return params, stats


def train_fused(fused: bool, steps: int = 12, accumulate: int = 1, gradient_as_bucket_view: bool = False,
                clip: bool = False, momentum: float = 0.9, uneven: bool = False, device: str = "cpu",
                torch_sgd: bool = False):
    """far.optim.SGD (or, as a reference, ``torch_sgd``: torch.optim.SGD) + WarmupSchedule; the
    reference steps after backward, the other fuses the update. Returns CPU copies of the parameters."""
    from fastallreduce.optim import SGD, WarmupSchedule

    rank = dist.get_rank()
    torch.manual_seed(0)
    model = Net().to(device)
    ddp = DDP(model, gradient_as_bucket_view=gradient_as_bucket_view, bucket_cap_mb=0.002)
    opt = (torch.optim.SGD if torch_sgd else SGD)(ddp.parameters(), lr=0.4, momentum=momentum, weight_decay=1e-4, nesterov=momentum > 0)
    sched = WarmupSchedule(opt, iters_per_epoch=2, warmup="gradual", warmup_epochs=2, warmup_start_lr=0.05,
                           milestones=(4,), gamma=0.5)
    if fused:
        far.ddp.register_fused_optimizer(ddp, opt)
    else:
        far.ddp.register(ddp)
    g = torch.Generator().manual_seed(100 + rank)
    error = None
    if uneven:  # rank r runs steps + r iterations; Join shadows the missing ones
        from torch.distributed.algorithms.join import Join
        with Join([ddp]):
            for i in range(steps + rank):
                opt.zero_grad()
                (ddp(torch.randn(8, 16, generator=g).to(device)) ** 2).mean().backward()
                opt.step()
                sched.step()
        return [p.detach().cpu() for p in model.parameters()], error
    for i in range(steps):
        opt.zero_grad()
        for j in range(accumulate):
            x = torch.randn(8, 16, generator=g).to(device)
            if j < accumulate - 1:
                with ddp.no_sync():
                    (ddp(x) ** 2).mean().backward()
            else:
                (ddp(x) ** 2).mean().backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1e-3)
        try:
            opt.step()
        except RuntimeError as e:
            error = str(e)
            break
        sched.step()
    return [p.detach().cpu() for p in model.parameters()], error


def _steps(ddp, opt, gen, n, after=()):
    """``n`` training steps on random batches from ``gen``; ``after``: schedulers stepped each time."""
    for _ in range(n):
        opt.zero_grad()
        (ddp(torch.randn(8, 16, generator=gen)) ** 2).mean().backward()
        opt.step()
        for s in after:
            s.step()


def train_scheduled(fused: bool, steps: int = 8, schedulers: bool = True):
    """LR schedulers made AFTER the update is fused into the hook (``schedulers``), and optimizer
    step hooks.

    ``fused``: far.optim.SGD fused by register_fused_optimizer; otherwise the reference,
    torch.optim.SGD on DDP's default allreduce. Returns the parameters, how often each step hook
    ran, and the lr of every step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    from fastallreduce.optim import SGD, WarmupSchedule

    torch.manual_seed(0)
    model = Net()
    ddp = DDP(model, bucket_cap_mb=0.002)
    kw = dict(lr=0.4, momentum=0.9, weight_decay=1e-4, nesterov=True)
    opt = SGD(ddp.parameters(), **kw) if fused else torch.optim.SGD(ddp.parameters(), foreach=False, **kw)
    calls = {"pre": 0, "post": 0, "global_pre": 0, "global_post": 0}

    def counter(key):
        def hook(o, args, kwargs):
            if o is opt:  # global hooks see every optimizer of the process
                calls[key] += 1
        return hook

    opt.register_step_pre_hook(counter("pre"))  # before and after the fusion: both must run
    if fused:
        far.ddp.register_fused_optimizer(ddp, opt)
    opt.register_step_post_hook(counter("post"))
    handles = [register_optimizer_step_pre_hook(counter("global_pre")),
               register_optimizer_step_post_hook(counter("global_post"))]
    scheds = []
    if schedulers:
        scheds = [WarmupSchedule(opt, iters_per_epoch=2, warmup="gradual", warmup_epochs=2, warmup_start_lr=0.05,
                                 milestones=(3,), gamma=0.5),
                  torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)]
    lrs = []
    gen = torch.Generator().manual_seed(100 + dist.get_rank())
    try:
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            _steps(ddp, opt, gen, 1, after=scheds)
    finally:
        for h in handles:
            h.remove()
    return [p.detach().clone() for p in model.parameters()], calls, lrs


def train_copy(hook, how: str, steps: int = 4, fuse_copy: bool = False):
    """A DDP model trains, is copied (``how``: "deepcopy", or "save": torch.save / torch.load
    through memory), the copy trains with an optimizer of its own, then the original trains on.

    ``hook``: None (DDP's default allreduce: the reference), "register" or "fused".
    ``fuse_copy``: the copy's own far.optim.SGD is fused into it by register_fused_optimizer
    (which replaces the copied hook); otherwise a torch.optim.SGD steps after backward. Returns
    the parameters and buffers of the original and of the copy, whether the copy's training left
    the original alone, and what the copy's hook state did."""
    import copy
    import io

    torch.manual_seed(0)
    model = Net(bn=True)
    ddp = DDP(model, bucket_cap_mb=0.002)
    kw = dict(lr=0.05, momentum=0.9)
    if hook == "fused":
        opt = far.optim.SGD(ddp.parameters(), **kw)
        state = far.ddp.register_fused_optimizer(ddp, opt)
    else:
        opt = torch.optim.SGD(ddp.parameters(), foreach=False, **kw)
        state = far.ddp.register(ddp) if hook else None
    gen = torch.Generator().manual_seed(100 + dist.get_rank())
    _steps(ddp, opt, gen, steps)
    if how == "deepcopy":
        twin = copy.deepcopy(ddp)
    else:
        f = io.BytesIO()
        torch.save(ddp, f)
        f.seek(0)
        twin = torch.load(f, weights_only=False)
    info = {}
    if hook:  # no Communicator made while copying: that is a collective, made at first use
        info["lazy"] = twin._comm_hooks[-1][1]._comm is None
    if hook == "fused":
        try:  # the original's optimizer stays with the original
            far.ddp.register_fused_optimizer(twin, opt)
        except ValueError as e:
            info["second_fusion"] = str(e)
    before = [t.detach().clone() for t in model.state_dict().values()]
    if fuse_copy:
        twin_opt = far.optim.SGD(twin.parameters(), **kw)
        far.ddp.register_fused_optimizer(twin, twin_opt)
    else:
        twin_opt = torch.optim.SGD(twin.parameters(), foreach=False, **kw)
    _steps(twin, twin_opt, gen, steps)
    untouched = all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    _steps(ddp, opt, gen, 2)
    if hook:
        twin_state = twin._comm_hooks[-1][1]
        twin_fused = getattr(twin_state, "optimizer", None)
        info.update(own_state=twin_state is not state, own_comm=twin_state.comm is not state.comm,
                    comm_hook=twin._get_ddp_logging_data().get("comm_hook"), buckets=twin_state.stats()["buckets"],
                    optimizer="none" if twin_fused is None else "own" if twin_fused is twin_opt else "other",
                    hooks=(len(twin._comm_hooks), len(twin._forward_pre_hooks)))
        twin_state.comm.close()
    dump = lambda m: [t.detach().clone() for t in m.state_dict().values()]  # noqa: E731
    return dump(model), dump(twin.module), untouched, info


class _Bucket:
    """What allreduce_hook reads of a dist.GradBucket."""

    def __init__(self, buf: torch.Tensor, index: int = 0, last: bool = True) -> None:
        self._buf, self._index, self._last = buf, index, last

    def buffer(self) -> torch.Tensor:
        return self._buf

    def is_last(self) -> bool:
        return self._last

    def index(self) -> int:
        return self._index


def hook_returns_engine_future(steps: int = 3):
    """The hook on CPU buckets returns the engine's own Future (no Python callback on the worker
    thread), and the step statistics come from the engine's accounting. Returns (every returned
    future the one comm.allreduce made, the last step's stats, the averaged values, steps)."""
    state = far.ddp.HookState()
    comm = state.comm
    made = []
    allreduce = comm.allreduce

    def spy(*args, **kwargs):
        made.append(allreduce(*args, **kwargs))
        return made[-1]

    comm.allreduce = spy
    bufs = [torch.empty(1000 * (i + 1)) for i in range(3)]
    same = True
    for _ in range(steps):
        for b in bufs:
            b.fill_(float(dist.get_rank() + 1))
        made.clear()
        futs = [far.ddp.allreduce_hook(state, _Bucket(b, i, i == len(bufs) - 1)) for i, b in enumerate(bufs)]
        same = same and len(made) == len(futs) and all(f is m for f, m in zip(futs, made))
        for f in futs:
            f.wait()
    return same, state.stats(), sorted({float(x) for b in bufs for x in b.unique()}), state.steps


def compressed_average(compression: str, algorithm: str, n: int = 4096):
    """allreduce_hook with 16-bit wire compression on gradients whose sum overflows float16 but
    whose average fits (40000 + 10000 * rank + up to 9000). Returns (result, exact average)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    state = far.ddp.HookState(compression=compression, algorithm=algorithm)
    pattern = 1000.0 * (torch.arange(n) % 10)
    buf = 40000.0 + 10000.0 * rank + pattern
    out = far.ddp.allreduce_hook(state, _Bucket(buf)).wait()
    expected = 40000.0 + 10000.0 * (world - 1) / 2 + pattern
    state.comm.close()
    return out.clone(), expected


def cast_order_against_torch(n: int = 64):
    """Rank 0's gradient (70016) is beyond float16's range, the average of the ranks' (30000) is
    not; every share and sum is exact in float16. Ours divides before the cast; torch's
    fp16_compress_hook casts first. Returns (ours, torch's)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook

    rank = dist.get_rank()
    assert dist.get_world_size() == 2
    grad = torch.full((n,), 70016.0 if rank == 0 else -10016.0)
    state = far.ddp.HookState(compression="fp16")
    ours = far.ddp.allreduce_hook(state, _Bucket(grad.clone())).wait().clone()
    state.comm.close()
    theirs = fp16_compress_hook(None, _Bucket(grad.clone())).wait().clone()
    return ours, theirs
