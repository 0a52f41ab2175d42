"""Soak: random sizes, dtypes, ops, algorithms, sync and async. Short form here; the long form is
FASTALLREDUCE_SOAK_OPS=5000 scripts/test.sh tests/test_soak.py"""
import pytest

import soak_cases as sc
from fastallreduce import knobs

OPS = int(knobs.value("FASTALLREDUCE_SOAK_OPS"))


@pytest.mark.parametrize("world", [2, 3, 5])
def test_soak(pool, world):
    res = pool(world).run(sc.soak, 1234 + world, OPS, timeout=60 + OPS * 2)
    for checked, wrong in res:
        assert checked == OPS and wrong == 0, res


def test_soak_hierarchical(pool):
    res = pool(4).run(sc.soak, 99, OPS, ["a", "a", "b", "b"], timeout=60 + OPS * 2)
    for checked, wrong in res:
        assert checked == OPS and wrong == 0, res
