"""The allreduce benchmark's inputs and checks: integer-valued patterns whose reduction is known
exactly, and the element-by-element comparison behind the #wrong column.

Every rank's input repeats a period of 7 small integers, shifted by rank, so that sums, products,
maxima and minima over hundreds of ranks stay exact in every dtype; :func:`expected_period`
computes the answer in 64-bit arithmetic and :func:`count_wrong` compares with it (``avg``
within two ulps, since the division rounds once).
"""
from __future__ import annotations

import torch

#: Element types by the names ``-d`` accepts (nccl-tests' spellings included).
DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
    "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32, "int": torch.int32,
    "int64": torch.int64, "bool": torch.bool,
}
OPS = ("sum", "avg", "product", "max", "min")
#: The reference implementation: ``torch.distributed.all_reduce`` on a gloo group.
REFERENCE = "gloo"
#: The implementation that times ``torch.distributed.all_reduce`` on a fastallreduce-backend group.
BACKEND = "backend"
#: Implementations timed through torch.distributed.all_reduce (no out= form; gloo has no AVG).
DIST_IMPLS = (REFERENCE, BACKEND)
#: fastallreduce (algorithm auto) on a tensor in registered memory: in place, nothing is copied
#: into shared memory; out of place (the output registered, the input not) it copies as usual.
REGISTERED = "registered"
#: An anchor, when installed: DeepSpeed's CPU shared-memory allreduce
#: (torch.ops.deepspeed.inference_all_reduce_: float32 or bfloat16 SUM only, one host).
DEEPSPEED = "deepspeed"
#: Implementations that take a tensor in place and nothing else (out of place: copy, then reduce).
INPLACE_IMPLS = DIST_IMPLS + (DEEPSPEED,)


_PERIOD = 7  # a prime, so that rank patterns do not line up with power-of-two chunk boundaries


def _pattern_values(dtype: torch.dtype, op: str) -> list[int]:
    """Small integers whose reductions over up to hundreds of ranks stay exact in every dtype."""
    if dtype == torch.bool:
        return [0, 1, 1, 0, 1, 0, 0]
    if op == "product":
        # Powers of two: any product is exact in floating point; integer wrap-around is the same
        # whatever the order of multiplication (arithmetic modulo 2^bits).
        return [1, 2, 1, 2, 1, 2, 1] if dtype == torch.uint8 else [1, -1, 2, -2, 1, 2, -1]
    if dtype == torch.uint8:
        return [0, 1, 2, 3, 0, 1, 2]
    return [-3, -2, -1, 0, 1, 2, 3]


def _rank_period(rank: int, dtype: torch.dtype, op: str) -> list[int]:
    vals = _pattern_values(dtype, op)
    return [vals[(j + 3 * rank) % _PERIOD] for j in range(_PERIOD)]


def tile(period: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` elements of ``period`` repeated (the whole input or expected result)."""
    reps = count // _PERIOD + 1
    return period.repeat(reps)[:count].contiguous()


def make_input(rank: int, count: int, dtype: torch.dtype, op: str) -> torch.Tensor:
    """Rank ``rank``'s input: a period-7 integer pattern shifted by rank."""
    return tile(torch.tensor(_rank_period(rank, dtype, op), dtype=dtype), count)


def expected_period(world: int, dtype: torch.dtype, op: str) -> torch.Tensor:
    """The exact reduction of one period over ``world`` ranks, computed in 64-bit arithmetic."""
    exact_t = torch.float64 if (dtype.is_floating_point) else torch.int64
    rows = torch.tensor([_rank_period(r, dtype, op) for r in range(world)], dtype=exact_t)
    if op in ("sum", "avg"):
        res = rows.sum(0)
        if op == "avg":
            res = res / world
    elif op == "product":
        res = rows.prod(0)
    elif op == "max":
        res = rows.max(0).values
    else:
        res = rows.min(0).values
    if dtype == torch.bool:
        return res.bool()
    if not dtype.is_floating_point and torch.iinfo(dtype).bits < 64:
        # Wrap around like the fixed-width arithmetic does (products of int8 may overflow).
        bits = torch.iinfo(dtype).bits
        res = res.remainder(2**bits)
        if dtype.is_signed:
            res = torch.where(res >= 2 ** (bits - 1), res - 2**bits, res)
    return res.to(dtype)


def count_wrong(result: torch.Tensor, expected: torch.Tensor, op: str) -> int:
    """Number of elements of ``result`` that differ from the exact answer (NaN counts as wrong)."""
    if op != "avg" and torch.equal(result, expected):
        return 0
    if op == "avg" and result.dtype.is_floating_point:
        # The division rounds once; allow two ulps of the result's type.
        tol = 2 * torch.finfo(result.dtype).eps
        ok = torch.isclose(result.float() if result.dtype in (torch.float16, torch.bfloat16) else result,
                           expected.float() if expected.dtype in (torch.float16, torch.bfloat16) else expected,
                           rtol=tol, atol=tol)
        return int((~ok).sum())
    return int(result.ne(expected).sum())
