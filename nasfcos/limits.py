"""Bounds shared by every reader and flag: image sides and batch sizes.

A size or batch a user (or a file) declares is checked against these before anything is
allocated from it.
"""

from __future__ import annotations

#: Smallest image side: the coarsest FPN level (stride 128) needs at least one cell.
MIN_SIDE = 32
#: Largest image side (pixels); beyond it a run only exhausts memory.
MAX_SIDE = 8192
#: Largest batch a flag or a manifest may declare.
MAX_BATCH = 4096
