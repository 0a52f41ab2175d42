"""``python -m fastallreduce``: see :mod:`fastallreduce.cli`."""
import sys

from .cli import main

sys.exit(main())
