"""The shared-memory segments that given processes created: a segment's name carries its creator's
pid (``fastallreduce_<tag>_<pid namespace>_<pid>_<local rank>_<16 hex digits>``), so a leak check
looks at its own test's processes only, never at another run's segments on the same machine."""
import os
import re

NAME = re.compile(r"fastallreduce_.+_\d+_(\d+)_\d+_[0-9a-f]{16}")


def segments_of(pids) -> list:
    """The names in /dev/shm of segments created by one of ``pids``."""
    pids = {int(p) for p in pids if p is not None}
    out = []
    for f in os.listdir("/dev/shm"):
        m = NAME.fullmatch(f)
        if m and int(m.group(1)) in pids:
            out.append(f)
    return sorted(out)
