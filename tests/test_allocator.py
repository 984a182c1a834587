"""The allocator tuning of processes that run the model (speechpipe.pipeline.offline.allocator): freed
buffers are reused instead of being returned to the system and faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from speechpipe.pipeline.offline.allocator import tune_allocator

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt tuning is for glibc"
)

#: allocates, fills and frees a 64 MB buffer ten times through the C allocator, as CTranslate2 does
#: with a batch's attention buffers, and prints the minor page faults that took.
CHURN = """
import ctypes, json, resource, sys
from speechpipe.pipeline.offline.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
size = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    p = libc.malloc(size)
    libc.memset(p, 1, size)
    libc.free(p)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "tuned": tuned.settings if tuned else None}))
"""


def churn(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


@glibc
def test_tuned_process_reuses_large_buffers_instead_of_faulting_them_in_again():
    plain, tuned = churn("plain"), churn("tune")
    assert plain["tuned"] is None
    assert tuned["tuned"] == {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 512 << 20}
    pages = (64 << 20) // 4096
    # untuned: every buffer is a fresh mmap, all its pages faulted in each time
    assert plain["faults"] >= 9 * pages
    # tuned: the first buffer's pages are faulted in once, then reused
    assert tuned["faults"] < 2 * pages
    assert tuned["faults"] * 4 < plain["faults"]


def test_tuning_can_be_turned_off():
    for value in ("0", "off", "false"):
        assert tune_allocator({"SPEECHPIPE_MALLOC_TUNING": value}) is None
