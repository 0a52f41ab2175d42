"""fastallreduce.optim.SGD against torch.optim.SGD (bit for bit on CPU), the paper's lr-in-momentum
form against a plain transcription of its equations, state_dict round trips, errors, CUDA."""
import copy
import itertools
import re

import pytest
import torch

from fastallreduce import _C
from fastallreduce.optim import SGD

# (weight_decay, momentum, dampening, nesterov, maximize), nesterov only where torch allows it.
OPTIONS = [o for o in itertools.product((0.0, 1e-2), (0.0, 0.9), (0.0, 0.3), (False, True), (False, True))
           if not (o[3] and (o[1] == 0 or o[2] != 0))]
LRS = (0.1, 0.1, 0.37, 0.05)  # the lr changes between steps


def _opts_id(o):
    return "wd{}-m{}-d{}{}{}".format(o[0], o[1], o[2], "-nest" if o[3] else "", "-max" if o[4] else "")


def _make_params(dtype, gen, device="cpu"):
    """Sizes around ATen's vector widths and its 32768-element parallel grain, odd shapes,
    a channels_last weight, a strided (transposed) view and an unaligned view."""
    sizes = [1, 2, 7, 15, 16, 17, 31, 33, 63, 100, 1000, 32768, 40001]
    ps = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    ps.append(torch.randn(3, 5, 7, generator=gen).to(dtype))
    ps.append(torch.randn(8, 6, 3, 3, generator=gen).to(dtype).to(memory_format=torch.channels_last))
    ps.append(torch.randn(6, 10, generator=gen).to(dtype).t())      # not dense-like: torch fallback
    ps.append(torch.randn(1001, generator=gen).to(dtype)[1:])       # misaligned by one element
    return [p.to(device) for p in ps]


def _grads_like(ps, gen):
    out = []
    for p in ps:
        g = torch.randn(p.shape, generator=gen).to(p.dtype).to(p.device)
        out.append(g if p.is_contiguous() else torch.empty_like(p).copy_(g))  # autograd's layout
    return out


def _run_pair(ref_opt, ours, ref_ps, our_ps, gen, lrs=LRS):
    for lr in lrs:
        grads = _grads_like(ref_ps, gen)
        for p, q, g in zip(ref_ps, our_ps, grads):
            p.grad = g.clone()
            q.grad = g.clone()
        for o in (ref_opt, ours):
            for group in o.param_groups:
                group["lr"] = lr
        ref_opt.step()
        ours.step()
        yield


def _assert_bitwise(ref_ps, our_ps, ref_opt, ours, what):
    for i, (p, q) in enumerate(zip(ref_ps, our_ps)):
        assert torch.equal(p, q), f"{what}: param {i} ({p.numel()} elements) differs"
        rb = ref_opt.state[p].get("momentum_buffer")
        qb = ours.state[q].get("momentum_buffer")
        assert (rb is None) == (qb is None)
        if rb is not None:
            assert torch.equal(rb, qb), f"{what}: momentum buffer {i} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=_opts_id)
def test_bitwise_parity_with_torch_for_loop(dtype, opts):
    wd, m, d, nest, maxi = opts
    gen = torch.Generator().manual_seed(hash(opts) % 1000)
    ref_ps = _make_params(dtype, gen)
    our_ps = [p.clone() for p in ref_ps]
    kw = dict(lr=LRS[0], momentum=m, dampening=d, weight_decay=wd, nesterov=nest, maximize=maxi)
    ref = torch.optim.SGD(ref_ps, foreach=False, **kw)
    ours = SGD(our_ps, **kw)
    for step, _ in enumerate(_run_pair(ref, ours, ref_ps, our_ps, gen)):
        _assert_bitwise(ref_ps, our_ps, ref, ours, f"step {step}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_many_random_sizes_and_thread_counts(threads):
    """Every size 1..130 and random larger ones in ONE kernel call, split over threads."""
    gen = torch.Generator().manual_seed(threads)
    sizes = list(range(1, 131)) + torch.randint(1000, 300000, (6,), generator=gen).tolist()
    ref_ps = [torch.randn(n, generator=gen) for n in sizes]
    our_ps = [p.clone() for p in ref_ps]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    ref = torch.optim.SGD(ref_ps, foreach=False, **kw)
    ours = SGD(our_ps, num_threads=threads, **kw)
    for _ in _run_pair(ref, ours, ref_ps, our_ps, gen):
        _assert_bitwise(ref_ps, our_ps, ref, ours, f"threads={threads}")


def _ulp_distance(a, b):
    """Distance in units in the last place between two 16-bit float tensors (finite values)."""
    def key(t):
        i = t.view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -(i & 0x7FFF), i)
    return (key(a) - key(b)).abs()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("opts", [o for o in OPTIONS if o[1] != 0 or o[2] == 0], ids=_opts_id)
def test_half_within_one_ulp_of_torch_fused(dtype, opts):
    wd, m, d, nest, maxi = opts
    gen = torch.Generator().manual_seed(7)
    ref_ps = [torch.randn(n, generator=gen).to(dtype) for n in (1, 31, 33, 1000, 40001)]
    our_ps = [p.clone() for p in ref_ps]
    kw = dict(lr=LRS[0], momentum=m, dampening=d, weight_decay=wd, nesterov=nest, maximize=maxi)
    ref = torch.optim.SGD(ref_ps, fused=True, **kw)
    ours = SGD(our_ps, **kw)
    for _ in _run_pair(ref, ours, ref_ps, our_ps, gen):
        for p, q in zip(ref_ps, our_ps):
            assert _ulp_distance(p, q).max() <= 1
            if m:
                assert _ulp_distance(ref.state[p]["momentum_buffer"], ours.state[q]["momentum_buffer"]).max() <= 1
            # Each step is compared from the same starting point.
            q.copy_(p)
            if m:
                ours.state[q]["momentum_buffer"].copy_(ref.state[p]["momentum_buffer"])


# ---------------------------------------------------------------------------------------------
def test_state_dict_round_trips_with_torch():
    gen = torch.Generator().manual_seed(3)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    ps = [torch.randn(n, generator=gen) for n in (10, 1000)]
    ref_ps, our_ps = [p.clone() for p in ps], [p.clone() for p in ps]
    ref, ours = torch.optim.SGD(ref_ps, foreach=False, **kw), SGD(our_ps, **kw)
    run = _run_pair(ref, ours, ref_ps, our_ps, gen, lrs=(0.1, 0.2))
    list(run)
    # ours -> torch, torch -> ours: both continue exactly as the originals.
    torch_from_ours_ps = [p.clone() for p in our_ps]
    torch_from_ours = torch.optim.SGD(torch_from_ours_ps, foreach=False, **kw)
    torch_from_ours.load_state_dict(ours.state_dict())
    ours_from_torch_ps = [p.clone() for p in ref_ps]
    ours_from_torch = SGD(ours_from_torch_ps, **kw)
    ours_from_torch.load_state_dict(copy.deepcopy(ref.state_dict()))
    assert set(ours.state_dict()["state"][0]) == {"momentum_buffer"}
    for _ in _run_pair(torch_from_ours, ours_from_torch, torch_from_ours_ps, ours_from_torch_ps, gen,
                       lrs=(0.3, 0.05)):
        _assert_bitwise(torch_from_ours_ps, ours_from_torch_ps, torch_from_ours, ours_from_torch, "after load")


def test_state_dict_does_not_alias_live_state_in_paper_form():
    p = torch.randn(100)
    opt = SGD([p], lr=0.5, momentum=0.9, lr_in_momentum=True)
    p.grad = torch.randn(100)
    opt.step()
    u = opt.state[p]["momentum_buffer"].clone()
    sd = opt.state_dict()
    assert torch.allclose(sd["state"][0]["momentum_buffer"], u / 0.5)
    assert torch.equal(opt.state[p]["momentum_buffer"], u)
    assert "momentum_buffer_lr" not in sd["state"][0]


# ---------------------------------------------------------------------------------------------
def _paper_reference(w0, grads, lrs, m, d, wd, nesterov, correction):
    """Goyal et al.: u_{t+1} = m u_t + lr_{t+1} (g + wd w_t); w_{t+1} = w_t - u_{t+1}, with u_t
    scaled by lr_{t+1} / lr_t first when correcting; the first step starts from u = lr g (torch's
    buffer = g). Dampening scales the new term, Nesterov steps by lr g + m u."""
    w, u, prev_lr = [x.clone() for x in w0], None, None
    for g_list, lr in zip(grads, lrs):
        new_u = []
        for i, (wi, gi) in enumerate(zip(w, g_list)):
            gw = gi + wd * wi
            if u is None:
                ui = lr * gw
            else:
                scale = lr / prev_lr if correction else 1.0
                ui = m * scale * u[i] + (1 - d) * lr * gw
            new_u.append(ui)
            w[i] = wi - (lr * gw + m * ui if nesterov else ui)
        u, prev_lr = new_u, lr
    return w, u


@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize("nesterov,dampening", [(False, 0.0), (False, 0.2), (True, 0.0)])
def test_paper_form_against_transcription(correction, nesterov, dampening):
    gen = torch.Generator().manual_seed(11)
    lrs = [0.1, 0.1, 0.8, 0.8, 0.05, 0.3]
    w0 = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (5, 1000, 40001)]
    grads = [[torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in w0] for _ in lrs]
    w_ref, u_ref = _paper_reference(w0, grads, lrs, 0.9, dampening, 1e-3, nesterov, correction)
    ps = [x.clone() for x in w0]
    opt = SGD(ps, lr=lrs[0], momentum=0.9, dampening=dampening, weight_decay=1e-3, nesterov=nesterov,
              lr_in_momentum=True, momentum_correction=correction)
    for g_list, lr in zip(grads, lrs):
        for p, g in zip(ps, g_list):
            p.grad = g
        opt.param_groups[0]["lr"] = lr
        opt.step()
    for p, w, u in zip(ps, w_ref, u_ref):
        torch.testing.assert_close(p, w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paper_form_with_correction_equals_torch_form(dtype):
    gen = torch.Generator().manual_seed(5)
    ps = [torch.randn(n, generator=gen).to(dtype) for n in (3, 4097)]
    ref_ps, our_ps = [p.clone() for p in ps], [p.clone() for p in ps]
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    ref = torch.optim.SGD(ref_ps, foreach=False, **kw)
    ours = SGD(our_ps, lr_in_momentum=True, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for _ in _run_pair(ref, ours, ref_ps, our_ps, gen, lrs=(0.1, 0.4, 0.4, 0.02)):
        for p, q in zip(ref_ps, our_ps):
            torch.testing.assert_close(q, p, **tol)
    # Its state_dict is torch's form and continues identically (up to rounding) in torch.
    sd = ours.state_dict()
    for i, p in enumerate(ref_ps):
        torch.testing.assert_close(sd["state"][i]["momentum_buffer"], ref.state[p]["momentum_buffer"], **tol)


def _step(params, opt, grads, lr):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.param_groups[0]["lr"] = lr
    opt.step()


@pytest.mark.parametrize("correction", [True, False])
def test_paper_form_state_dict_continues_in_torch(correction):
    """Saved after the scheduler moved the lr (0.2 -> 0.6), torch continues exactly as the paper
    form does: always with correction; without it for the step at the lr of saving."""
    gen = torch.Generator().manual_seed(9)
    rand = lambda: [torch.randn(257, generator=gen, dtype=torch.float64)]  # noqa: E731
    ours_p = rand()
    ours = SGD(ours_p, lr=0.2, momentum=0.9, weight_decay=1e-3, lr_in_momentum=True, momentum_correction=correction)
    for lr in (0.2, 0.4, 0.2):
        _step(ours_p, ours, rand(), lr)
    ours.param_groups[0]["lr"] = 0.6
    torch_p = [ours_p[0].clone()]
    tor = torch.optim.SGD(torch_p, lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=False)
    tor.load_state_dict(ours.state_dict())
    for i, lr in enumerate((0.6, 0.1, 0.1)):
        g = rand()
        _step(ours_p, ours, g, lr)
        _step(torch_p, tor, g, lr)
        if correction or i == 0:
            torch.testing.assert_close(torch_p[0], ours_p[0], rtol=1e-12, atol=1e-12)
    if not correction:  # the uncorrected form carries the old lr into the new one: they part
        assert not torch.allclose(torch_p[0], ours_p[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("correction", [True, False])
def test_torch_state_dict_continues_in_paper_form(correction):
    gen = torch.Generator().manual_seed(4)
    rand = lambda: [torch.randn(300, generator=gen, dtype=torch.float64)]  # noqa: E731
    torch_p = rand()
    tor = torch.optim.SGD(torch_p, lr=0.3, momentum=0.9, dampening=0.1, foreach=False)
    for lr in (0.3, 0.5, 0.3):
        _step(torch_p, tor, rand(), lr)
    ours_p = [torch_p[0].clone()]
    ours = SGD(ours_p, lr=1.0, momentum=0.9, dampening=0.1, lr_in_momentum=True, momentum_correction=correction)
    ours.load_state_dict(tor.state_dict())
    assert ours.param_groups[0]["lr_in_momentum"] is True  # kept from construction
    lrs = (0.3, 0.05, 0.05) if correction else (0.3, 0.3, 0.3)
    for lr in lrs:
        g = rand()
        _step(ours_p, ours, g, lr)
        _step(torch_p, tor, g, lr)
        torch.testing.assert_close(ours_p[0], torch_p[0], rtol=1e-12, atol=1e-12)
    # and back again: the saved buffer is torch's v
    torch.testing.assert_close(ours.state_dict()["state"][0]["momentum_buffer"], tor.state[torch_p[0]]["momentum_buffer"],
                               rtol=1e-12, atol=1e-12)


def test_lr_in_momentum_rejects_zero_lr():
    p = torch.randn(4)
    p.grad = torch.randn(4)
    with pytest.raises(ValueError, match="lr=0"):
        SGD([p], lr=0.0, momentum=0.9, lr_in_momentum=True).step()


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(lr=-0.1), dict(lr=torch.tensor([0.1, 0.2])), dict(lr=0.1, momentum=-0.5),
    dict(lr=0.1, weight_decay=-1.0), dict(lr=0.1, nesterov=True), dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    dict(lr=0.1, fused=True, foreach=True), dict(lr=0.1, fused=True, differentiable=True),
])
def test_validation_matches_torch(kwargs):
    with pytest.raises((ValueError, RuntimeError)) as theirs:
        torch.optim.SGD([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(theirs.type, match=re.escape(str(theirs.value))):
        SGD([torch.zeros(2, requires_grad=True)], **kwargs)


def test_sparse_gradient_is_a_clear_error():
    p = torch.zeros(10, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[1, 3]], [1.0, 2.0], (10,))
    with pytest.raises(RuntimeError, match="sparse gradients"):
        SGD([p], lr=0.1, momentum=0.9).step()


def test_complex_and_tensor_lr_fall_back_to_torch_math():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(50, dtype=torch.complex64, generator=gen)
    q = p.clone()
    ref = torch.optim.SGD([p], lr=torch.tensor(0.1), momentum=0.9, foreach=False)
    ours = SGD([q], lr=torch.tensor(0.1), momentum=0.9)
    for _ in range(3):
        g = torch.randn(50, dtype=torch.complex64, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert torch.equal(p, q)


def test_kernel_leaves_what_it_cannot_take_to_the_caller():
    args = (0.1, 0.0, 0.0, 0.0, False, False, False, 1.0, True, 1)
    p, g = torch.zeros(4, 6), torch.zeros(6, 4).t()                     # strides differ
    ints = torch.zeros(3, dtype=torch.int32)
    ok = torch.zeros(5)
    ok_grad = torch.ones(5)
    assert _C.sgd_step_cpu([p, ints, ok], [g, ints.clone(), ok_grad], [], [], *args) == [0, 1]
    assert torch.equal(ok, torch.full((5,), -0.1)) and torch.equal(p, torch.zeros(4, 6))


def test_params_without_grad_and_closure():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = SGD([a, b], lr=0.5, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = (a * 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 6.0
    assert torch.equal(a.detach(), torch.zeros(3)) and torch.equal(b.detach(), torch.ones(3))
    assert b not in opt.state or "momentum_buffer" not in opt.state[b]


# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("opts", [(1e-4, 0.9, 0.0, False, False), (1e-2, 0.9, 0.0, True, True),
                                  (0.0, 0.9, 0.3, False, False), (1e-3, 0.0, 0.0, False, False)], ids=_opts_id)
@pytest.mark.parametrize("path", ["torch", "kernel"])
def test_cuda_matches_torch_fused(dtype, opts, path):
    assert _C.with_cuda, "fastallreduce was built without CUDA on a machine that has a GPU"
    wd, m, d, nest, maxi = opts
    gen = torch.Generator().manual_seed(2)
    ref_ps = [p for p in _make_params(dtype, gen, device="cuda") if p.is_contiguous() or p.dim() == 4]
    ref_ps.append(torch.randn(300002, generator=gen).to(dtype).cuda()[1:])  # several chunks, misaligned
    our_ps = [p.clone() for p in ref_ps]
    kw = dict(lr=LRS[0], momentum=m, dampening=d, weight_decay=wd, nesterov=nest, maximize=maxi)
    ref = torch.optim.SGD(ref_ps, fused=True, **kw)
    ours = SGD(our_ps, cuda_sgd=path, **kw)
    tol = {torch.float32: 1e-6, torch.float64: 1e-14, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for _ in _run_pair(ref, ours, ref_ps, our_ps, gen):
        torch.cuda.synchronize()
        for p, q in zip(ref_ps, our_ps):
            torch.testing.assert_close(q, p, rtol=tol, atol=tol)
            if m:
                torch.testing.assert_close(ours.state[q]["momentum_buffer"], ref.state[p]["momentum_buffer"],
                                           rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize("path", ["torch", "kernel"])
def test_cuda_paper_form_matches_cpu_kernel(correction, path):
    """The CUDA lr-in-momentum form (our kernel, or the default foreach operations), with and
    without correction, against the CPU kernel."""
    gen = torch.Generator().manual_seed(8)
    cpu_ps = [torch.randn(n, generator=gen) for n in (33, 70000, 300001)]
    gpu_ps = [p.cuda() for p in cpu_ps]
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True, lr_in_momentum=True,
              momentum_correction=correction)
    cpu, gpu = SGD(cpu_ps, **kw), SGD(gpu_ps, cuda_sgd=path, **kw)
    for lr in LRS:
        for p, q in zip(cpu_ps, gpu_ps):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.cuda()
        for o in (cpu, gpu):
            o.param_groups[0]["lr"] = lr
            o.step()
    for p, q in zip(cpu_ps, gpu_ps):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gpu.state[q]["momentum_buffer"].cpu(), cpu.state[p]["momentum_buffer"],
                                   rtol=1e-6, atol=1e-6)
