"""``python -m fastallreduce.demo``: the same as ``python -m fastallreduce demo``."""
import sys

from . import main

sys.exit(main())
