"""The package's public subpackages are reachable from ``import fastallreduce``, as torch.optim is
from torch (checked in a fresh interpreter: nothing imported them before)."""
import subprocess
import sys

CHECK = """
import sys
import fastallreduce as far
assert callable(far.optim.SGD) and callable(far.optim.WarmupSchedule)
assert callable(far.ddp.register) and callable(far.ddp.register_fused_optimizer)
assert callable(far.fused.register_fused_optimizer)
assert far.ddp.register_fused_optimizer is far.fused.register_fused_optimizer
assert "matplotlib" not in sys.modules  # the benchmarks' plotting stays unimported
assert far.bench.__name__ == "fastallreduce.bench"
assert "bench" in dir(far)
"""


def test_subpackages_reachable():
    res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
