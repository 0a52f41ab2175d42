"""DDP step benchmark (see fastallreduce/bench/ddp_step.py): python benchmarks/ddp_step.py --steps 10"""
from fastallreduce.bench.ddp_step import main

if __name__ == "__main__":
    main()
