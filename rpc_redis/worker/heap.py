"""Keeping a worker process's memory from staying at its high-water mark.

glibc serves a large allocation (128 KiB and more) with mmap, and returns it when it
is freed; but each time it frees one, it raises that threshold to the block's size (up
to 32 MiB), so that later large blocks (messages, parsed requests, replies of a few
MiB) come from its heaps instead, which it seldom gives back. One burst of large
messages then leaves a worker's RSS hundreds of MB above its need for good: 224 MB
against 39 MB before the fuzz run (docs/reliability.md). Fixing the threshold at
glibc's own default turns that adjustment off, and large blocks go back when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed
# Set in the environment, glibc reads it at startup, and it wins: nothing to do here.
ENVIRONMENT_VARIABLE = "MALLOC_MMAP_THRESHOLD_"


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold, for this whole process: for ``rpc-worker``, which
    owns its process (an application embedding a worker can set the environment
    variable instead). True if done; False elsewhere than glibc, or if already set."""
    if ENVIRONMENT_VARIABLE in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
