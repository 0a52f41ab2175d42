"""The allreduce benchmark's report: nccl-tests-style tables, the busbw plot and the #wrong total.

Everything here reads the JSON document that :func:`fastallreduce.bench.allreduce_harness.run`
returns (see there for its layout); nothing here measures.
"""
from __future__ import annotations

from typing import Any

from .allreduce_check import BACKEND, DEEPSPEED, REFERENCE, REGISTERED


def human_size(nbytes: int) -> str:
    """A byte count in the largest binary unit that divides it: 4096 -> '4 KiB', 1000 -> '1000 B'."""
    for unit, m in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= m and nbytes % m == 0:
            return f"{nbytes // m} {unit}"
    return f"{nbytes} B"


def _fmt_bw(v: float) -> str:
    return f"{v:7.3f}" if v < 100 else f"{v:7.1f}"


def _fmt_time(us: float) -> str:
    return f"{us:10.1f}" if us < 1e6 else f"{us:10.0f}"


def _title(name: str) -> str:
    """The heading of an implementation's table."""
    if name == REFERENCE:
        return "torch.distributed gloo (reference)"
    if name == BACKEND:
        return "dist.all_reduce on the fastallreduce backend"
    if name == REGISTERED:
        return "fastallreduce algorithm=auto on registered memory (in place: zero-copy)"
    if name == DEEPSPEED:
        return "DeepSpeed CPU allreduce (anchor)"
    return f"fastallreduce algorithm={name}"


def format_tables(run_: dict[str, Any], config: dict[str, Any]) -> str:
    """The nccl-tests-style tables of one world size: one block per implementation."""
    world = run_["nranks"]
    rounds = config.get("rounds", 1)
    over = f"{config['iters']}" if rounds == 1 else f"{config['iters'] * rounds} ({rounds} alternating blocks)"
    lines = [f"# ===== {world} ranks, {config['dtype']} {config['op']}; time = median over {over} "
             f"iterations of the slowest rank; busbw = algbw * 2(p-1)/p; checked: {config['check']} ====="]
    for name, why in run_["skipped"].items():
        lines.append(f"# skipped {name}: {why}")
    for note in run_["notes"]:
        lines.append(f"# note: {note}")
    has_ref = REFERENCE in run_["results"]
    for name, rows in run_["results"].items():
        is_ref = name == REFERENCE
        title = _title(name)
        extra_h1 = "" if is_ref or not has_ref else "   gloo/ours"
        extra_h2 = "" if is_ref or not has_ref else "    oop    ip"
        show_algo = name == "auto"
        # The backend, or a registered buffer, against the Communicator on ordinary tensors (auto),
        # timed call for call in one interleaved loop (_rank_paired): median time / auto's, in place.
        vs_comm = bool(rows) and "time_vs_communicator" in rows[0]["ip"]
        if vs_comm:
            extra_h1 += " time/auto"
            extra_h2 += "        ip"
        lines.append("#")
        lines.append(f"# {title}")
        lines.append("#" + " " * 43 + "out-of-place" + " " * 26 + "in-place" + " " * 14 + extra_h1)
        lines.append(f"# {'size':>10} {'count':>11} {'type':>8} {'redop':>6}"
                     f" {'time':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
                     f" {'time':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6}" + extra_h2
                     + ("  chose" if show_algo else ""))
        lines.append(f"# {'(B)':>10} {'(elements)':>11} {'':>8} {'':>6}"
                     f" {'(us)':>10} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
                     f" {'(us)':>10} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}")
        for r in rows:
            o, i = r["oop"], r["ip"]
            line = (f"  {r['size']:>10} {r['count']:>11} {r['type']:>8} {r['redop']:>6}"
                    f" {_fmt_time(o['time_us'])} {_fmt_bw(o['algbw_GBps'])} {_fmt_bw(o['busbw_GBps'])} {o['wrong']:>6}"
                    f" {_fmt_time(i['time_us'])} {_fmt_bw(i['algbw_GBps'])} {_fmt_bw(i['busbw_GBps'])} {i['wrong']:>6}")
            if not is_ref and has_ref:
                line += f" {o['ratio_vs_gloo']:6.2f} {i['ratio_vs_gloo']:5.2f}"
            if vs_comm:
                line += f" {i['time_vs_communicator']:9.3f}"
            if show_algo:
                line += f"  {i.get('algorithm', '?')}"
            lines.append(line)
    copy = config.get("copy_GBps")
    if copy:
        lines.append("#")
        # Compared at the largest size only: smaller buffers stay in cache, the copy was measured in DRAM.
        for name, rows in run_["results"].items():
            last = rows[-1]
            lines.append(f"# {name}: in-place busbw at {human_size(last['size'])} {last['ip']['busbw_GBps']:.3f} GB/s"
                         f" = {100 * last['ip']['busbw_GBps'] / copy:.0f}% of the memory copy bandwidth ({copy:.2f} GB/s)")
    total_wrong = sum(r[m]["wrong"] for rows in run_["results"].values() for r in rows for m in ("oop", "ip"))
    lines.append(f"# {world} ranks: out of bounds values (#wrong, all rows): {total_wrong} "
                 f"{'OK' if total_wrong == 0 else 'FAILED'}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: str) -> None:
    """busbw against size, one panel per world size, every implementation (in-place solid, out-of-place dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.6), squeeze=False)
    copy_gbps = doc["copy_bandwidth"]["GBps"]
    for ax, run_ in zip(axes[0], runs):
        for k, (name, rows) in enumerate(run_["results"].items()):
            xs = [r["size"] for r in rows]
            color = "black" if name == REFERENCE else f"C{k}"
            label = {REFERENCE: "gloo (torch.distributed)", BACKEND: "dist.all_reduce (fastallreduce backend)"}.get(
                name, name)
            ax.plot(xs, [r["ip"]["busbw_GBps"] for r in rows], "-o", ms=3, color=color, label=f"{label} in-place")
            ax.plot(xs, [r["oop"]["busbw_GBps"] for r in rows], "--", color=color, alpha=0.6,
                    label=f"{label} out-of-place")
        ax.axhline(copy_gbps, color="grey", lw=0.8, ls=":", label=f"memory copy {copy_gbps:.1f} GB/s (1 thread)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.set_title(f"allreduce {doc['config']['dtype']} {doc['config']['op']}, {run_['nranks']} ranks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['machine']['cpu_model']}, {doc['machine']['usable_cpus']} CPUs; time = median of the slowest rank", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def total_wrong(doc: dict[str, Any]) -> int:
    """#wrong summed over every world size, implementation, size and mode of a run's document."""
    return sum(r[m]["wrong"] for run_ in doc["runs"] for rows in run_["results"].values()
               for r in rows for m in ("oop", "ip"))
