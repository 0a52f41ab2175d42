#!/usr/bin/env python
"""Allreduce bandwidth, nccl-tests format: fastallreduce vs torch.distributed gloo in the same run.

Same as `python -m fastallreduce bench allreduce [args]`; see fastallreduce/bench/allreduce_bw.py.
Example (the README's table): python benchmarks/allreduce_bw.py -n 2,4,8 -b 4K -e 256M -f 4
"""
import sys

from fastallreduce.bench.allreduce_bw import main

if __name__ == "__main__":
    sys.exit(main())
