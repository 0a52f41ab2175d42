"""pytest-benchmark suite: one SGD step on ResNet-50's 161 parameter tensors (25.6M float32).

Not part of the test suite (testpaths is tests/); run it on a quiet machine:

    pytest benchmarks/test_bench_sgd.py --benchmark-columns=median,iqr,rounds

test_sgd_step times each implementation on its own; test_goals times all of them interleaved
in one run (fastallreduce.bench.sgd_step.run) and checks the goals of issue 5: at least as fast
as torch's fused SGD and at least 2.5x the default for-loop, at 1 and 2 threads.
"""
import pytest
import torch

from fastallreduce.bench import sgd_step as bench

IMPLS = ["torch for-loop (foreach=False)", "torch foreach=True", "torch fused=True", "fastallreduce SGD"]


@pytest.fixture(scope="module")
def params():
    return bench.make_params()


@pytest.fixture
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("impl", IMPLS, ids=["loop", "foreach", "fused", "fastallreduce"])
def test_sgd_step(benchmark, params, impl, threads):
    opt = bench.optimizers(params, bench.hyperparameters())[impl]()
    for _ in range(3):  # allocate momentum buffers, warm the allocator
        opt.step()
    benchmark.extra_info.update(threads=threads, params=sum(p.numel() for p in params))
    benchmark.pedantic(opt.step, rounds=15, iterations=1, warmup_rounds=1)
    benchmark.extra_info["gb_per_s"] = bench.BYTES_PER_PARAM * benchmark.extra_info["params"] / benchmark.stats["median"] / 1e9


def test_goals(benchmark):
    rows = benchmark.pedantic(bench.run, kwargs={"threads": (1, 2), "repeats": 15}, rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    for t in (1, 2):
        ours = next(r for r in rows if r["threads"] == t and r["impl"] == "fastallreduce SGD")
        benchmark.extra_info[f"threads{t}"] = {"time_vs_fused": ours["ratio_vs_fused"], "speedup_vs_loop": ours["speedup_vs_loop"]}
        assert ours["ratio_vs_fused"] <= 1.0, f"{t} thread(s): slower than torch fused ({ours['ratio_vs_fused']:.2f}x its time)"
        assert ours["speedup_vs_loop"] >= 2.5, f"{t} thread(s): only {ours['speedup_vs_loop']:.2f}x the for-loop"
