"""The command line: allreduce_bw at tiny sizes (#wrong must be 0), bench all, info, demo --quick.

Each runs `python -m fastallreduce ...` in a subprocess with a timeout, as a user would.
Speed is never asserted here; only correctness and the files written.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastallreduce.bench import allreduce_bw as bw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    p = subprocess.run([sys.executable, "-m", "fastallreduce", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"
    return p.stdout


# --- the checker itself: #wrong is only meaningful if a wrong result is counted ------------------
_CASES = [(d, o) for d in ["float32", "bfloat16", "float16", "int8", "uint8", "int64", "float64"]
          for o in ["sum", "avg", "product", "max", "min"] if not (o == "avg" and d.startswith(("int", "uint")))]


@pytest.mark.parametrize("dtype,op", _CASES + [("bool", "max"), ("bool", "min")])
@pytest.mark.parametrize("world", [1, 3, 8])
def test_expected_values_are_exact(dtype, op, world):
    dt = bw.DTYPES[dtype]
    count = 23
    inputs = [bw.make_input(r, count, dt, op) for r in range(world)]
    exp = bw.tile(bw.expected_period(world, dt, op), count)
    # Reduce in the input dtype, one rank after another (what a ring does), and compare exactly.
    acc = inputs[0].clone()
    for x in inputs[1:]:
        if op in ("sum", "avg"):
            acc = acc + x
        elif op == "product":
            acc = acc * x
        elif op == "max":
            acc = torch.maximum(acc, x)
        else:
            acc = torch.minimum(acc, x)
    if op == "avg":
        acc = (acc.double() / world).to(dt)
    assert bw.count_wrong(acc, exp, op) == 0
    bad = acc.clone()
    if dt == torch.bool:
        bad[5], bad[17] = ~bad[5], ~bad[17]
    else:
        bad[5] += 1
        bad[17] = bad[17] - 2 if dt != torch.uint8 else bad[17] + 2
    assert bw.count_wrong(bad, exp, op) == 2


def test_count_wrong_counts_nan():
    exp = torch.zeros(10)
    res = exp.clone()
    res[3] = float("nan")
    assert bw.count_wrong(res, exp, "sum") == 1


def test_sizes():
    assert bw.sizes_from(8, 64 * 1024, 8) == [8, 64, 512, 4096, 32768]
    assert bw.parse_size("4K") == 4096 and bw.parse_size("256M") == 256 << 20 and bw.parse_size("8") == 8


# --- the tools end to end -----------------------------------------------------------------------
def test_allreduce_bw_tiny(tmp_path):
    # Every default algorithm, and dist.all_reduce on a fastallreduce-backend group made beside
    # the ranks' default gloo group.
    out = _run(["bench", "allreduce", "-n", "2", "-b", "8", "-e", "64K", "-f", "8", "-w", "1", "-i", "2",
                "-a", bw.DEFAULT_ALGORITHMS + "," + bw.BACKEND + ",registered", "--out", str(tmp_path),
                "--no-progress"], timeout=180)
    doc = json.loads((tmp_path / "allreduce_bw.json").read_text())
    assert (tmp_path / "allreduce_bw.png").stat().st_size > 1000
    (run,) = doc["runs"]
    assert run["nranks"] == 2
    assert {"gloo", "ring", "halving_doubling", "auto", bw.BACKEND} <= set(run["results"]), run
    assert all(r["ip"]["time_vs_communicator"] > 0 for r in run["results"][bw.BACKEND])
    assert all(r["ip"]["time_vs_communicator"] > 0 for r in run["results"]["registered"])
    assert "dist.all_reduce on the fastallreduce backend" in out and "registered memory" in out
    for name, rows in run["results"].items():
        assert [r["size"] for r in rows] == [8, 64, 512, 4096, 32768, 65536][: len(rows)]
        assert len(rows) == 5  # 8 B .. 32 KiB by 8 (64 KiB is not reached: 8 * 8^5 > 64 Ki)
        for r in rows:
            for mode in ("oop", "ip"):
                assert r[mode]["wrong"] == 0, (name, r)
                assert r[mode]["time_us"] > 0 and len(r[mode]["iter_times_us"]) == 2
            if name != "gloo":
                assert r["ip"]["ratio_vs_gloo"] > 0
    for name, why in run["skipped"].items():  # e.g. shm before it lands: skipped with a reason
        assert why
    assert "#wrong" in out and "busbw" in out and "OK" in out


def test_ddp_step_tiny(tmp_path):
    # One step of every mode at one bucket size: the rows and the table, not the timings.
    from fastallreduce.bench import ddp_step

    out = _run(["bench", "ddp", "--steps", "1", "--warmup", "0", "--rounds", "1", "--buckets", "1",
                "--batch", "4", "--machinery", "--gradient-as-bucket-view",
                "--json", str(tmp_path / "ddp_step.json")], timeout=300)
    rows = json.loads((tmp_path / "ddp_step.json").read_text())
    assert [r["mode"] for r in rows] == list(ddp_step.MODES) + [ddp_step.MACHINERY], rows
    assert all(r["gradient_as_bucket_view"] for r in rows), rows
    assert all(r["step_ms"] > 0 and r["steps"] == 1 for r in rows), rows
    far_row = next(r for r in rows if r["mode"] == "ddp_far")
    assert far_row["bucket_mb"] == 1.0 and "comm_overhead_vs_ddp" in far_row, far_row
    assert "| DDP default reducer on the fastallreduce backend | 1.0 |" in out, out


def test_bench_all_writes_report(tmp_path):
    # The DDP/SGD step benchmarks take minutes; they are left out here (each has its own tests).
    _run(["bench", "all", "--out", str(tmp_path), "--nranks", "2", "--skip", "ddp,sgd",
          "--allreduce-args", "-b 64 -e 4K -f 8 -w 0 -i 1 --no-progress -a ring"], timeout=300)
    report = (tmp_path / "report.md").read_text()
    assert "## Machine" in report and "torch" in report and "Allreduce bandwidth" in report
    assert (tmp_path / "allreduce_bw.json").exists() and (tmp_path / "machine.json").exists()


def test_info():
    out = _run(["info"], timeout=180)
    assert "with_cuda" in out and "torch" in out
    assert "ring" in out and "available" in out


def test_demo_quick(tmp_path):
    from fastallreduce import demo

    assert not demo.missing_recipe()
    # digits: the same small run whether or not this machine has the Fashion-MNIST package
    _run(["demo", "--quick", "--data", "digits", "--out", str(tmp_path), "--no-progress"], timeout=300)
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert {r["setting"] for r in doc["runs"]} == {"baseline", "no warmup", "constant warmup", "gradual warmup"}
    base = next(r for r in doc["runs"] if r["setting"] == "baseline")
    e = base["curve"][0]
    # It trains: the loss of the last quarter of the epoch is below the first quarter's, and the test
    # error is below chance (90 %).
    assert e["loss_last_quarter"] < e["loss_first_quarter"], e
    assert base["final_error"] < 90.0
    assert doc["conclusions"] and doc["summary"]["baseline"]["seeds"] == 1
