"""vislab.memory: a big tensor comes from the heap, not from its own mmap, and its pages stay after
it is freed. Observed through glibc's own bookkeeping (mallinfo2) in a fresh process each."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                                reason="needs glibc >= 2.33 (mallinfo2)")

PROBE = r"""
import ctypes, json, sys
from vislab.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
took = keep_freed_memory() if sys.argv[1] == "call" else None
import torch
before = libc.mallinfo2()
t = torch.empty(64 << 20, dtype=torch.uint8)
t.fill_(1)
during = libc.mallinfo2()
del t
after = libc.mallinfo2()
print(json.dumps({"took": took, "mmapped": during.hblkhd - before.hblkhd, "heap_growth": during.arena - before.arena,
                  "free_after": after.fordblks - before.fordblks, "heap_after": after.arena - before.arena}))
"""
MIB64 = 64 << 20


def _probe(call: str, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, call], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_default_glibc_maps_a_big_tensor_and_returns_it():
    """The reference behaviour the setting changes: above 32 MiB glibc always mmaps, and unmaps on free."""
    got = _probe("no")
    assert got["mmapped"] >= MIB64
    assert got["heap_after"] < MIB64


def test_keep_freed_memory_serves_from_the_heap_and_keeps_the_pages():
    got = _probe("call", VISLAB_MALLOC="")
    assert got["took"] is True
    assert got["mmapped"] < MIB64 and got["heap_growth"] >= MIB64
    # freed, but still the process's: the next batch's tensor reuses these pages without faults
    assert got["heap_after"] >= MIB64 and got["free_after"] >= MIB64


def test_vislab_malloc_system_leaves_the_defaults():
    got = _probe("call", VISLAB_MALLOC="system")
    assert got["took"] is False
    assert got["mmapped"] >= MIB64 and got["heap_after"] < MIB64


def test_the_command_line_applies_it():
    """`vislab ...` applies the setting before any command runs: afterwards the process keeps freed memory."""
    code = PROBE.replace("took = keep_freed_memory() if sys.argv[1] == \"call\" else None",
                         "from vislab import cli\n"
                         "sys.argv = ['vislab', 'recipes']\n"
                         "try:\n    cli.app()\nexcept SystemExit:\n    pass\n"
                         "took = None")
    assert code != PROBE
    proc = subprocess.run([sys.executable, "-c", code, "cli"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, VISLAB_MALLOC=""))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["mmapped"] < MIB64 and got["heap_after"] >= MIB64
