"""Bounds shared by every reader and flag: image sides, batch sizes, threads.

A size or batch a user (or a file) declares is checked against these before anything is
allocated from it.
"""

from __future__ import annotations

import os

#: Smallest image side: the coarsest FPN level (stride 128) needs at least one cell.
MIN_SIDE = 32
#: Largest image side (pixels); beyond it a run only exhausts memory.
MAX_SIDE = 8192
#: Largest batch a flag or a manifest may declare.
MAX_BATCH = 4096
#: Most float32 input elements one run may allocate (batch x channels x H x W, all inputs
#: together): 2**28 is 1 GiB.  A batch or size within the bounds above can still exceed it
#: together (4096 x 3 x 8192 x 8192 is 3 TiB), so it is checked before inputs are made.
MAX_INPUT_ELEMENTS = 1 << 28


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count): the most
    threads a flag may ask for."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)
