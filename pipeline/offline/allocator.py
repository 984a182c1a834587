"""The C allocator tuned for the model's buffers, for processes that run the model.

CTranslate2 allocates its buffers with ``posix_memalign`` and frees them after each layer. Whisper's
encoder self-attention alone needs 54 MB per window (6 heads x 1500 x 1500 float32) in every
layer, above glibc's largest ``mmap`` threshold (32 MB): each of those buffers is a fresh ``mmap``
whose pages the kernel zero-fills on first touch and takes back at ``munmap``, and each replica's
thread allocates from an arena of its own that is trimmed as it empties. On the 408 s benchmark
file that was 1.3 million page faults and 2.5-3.2 s of system time out of ~16 s of CPU.

:func:`tune_allocator` tells glibc (``mallopt``) to serve every allocation from one heap
(``M_ARENA_MAX`` 1, ``M_MMAP_MAX`` 0) and to keep up to ``TRIM_THRESHOLD`` of freed memory at its
top instead of returning it, so the same pages are reused from one window to the next: 140,000
page faults and 0.3-0.4 s of system time on that file, peak RSS unchanged (635 against 658 MB).
It must run before the model is loaded and before the threads that use it start; the command line
does it first thing (:func:`speechpipe.pipeline.cli.main.main`), so do Ray's workers. Other C libraries
(musl, macOS, Windows) are left as they are. ``SPEECHPIPE_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from dataclasses import dataclass

log = logging.getLogger("speechpipe.allocator")

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

#: freed memory kept at the top of the heap before it goes back to the system: room for a batch of
#: two windows' attention buffers (108 MB) and the rest of an encoder pass.
TRIM_THRESHOLD = 512 << 20

#: what is set, in this order: name -> (mallopt parameter, value)
SETTINGS = {
    "M_ARENA_MAX": (M_ARENA_MAX, 1),  # every thread allocates from the one heap
    "M_MMAP_MAX": (M_MMAP_MAX, 0),  # large buffers from the heap too, not a mmap each
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
}

ENV = "SPEECHPIPE_MALLOC_TUNING"

_applied: AllocatorTuning | None = None


@dataclass(frozen=True)
class AllocatorTuning:
    """What :func:`tune_allocator` set: ``mallopt`` parameter -> value."""

    settings: dict[str, int]


def tune_allocator(environ: dict[str, str] | None = None) -> AllocatorTuning | None:
    """Tune glibc's allocator for this process (once); returns what was set, or None when the C
    library is not glibc, the tuning is turned off (``SPEECHPIPE_MALLOC_TUNING=0``) or ``mallopt``
    refused a setting."""
    global _applied
    env = os.environ if environ is None else environ
    if env.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _applied is not None:
        return _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for name, (param, value) in SETTINGS.items():
        if mallopt(param, value) != 1:  # mallopt returns 1 on success
            log.debug("mallopt(%s, %d) refused; allocator left as it was", name, value)
            return None
    _applied = AllocatorTuning({name: value for name, (_param, value) in SETTINGS.items()})
    return _applied
