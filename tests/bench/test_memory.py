"""bench.memory.reuse_freed_memory: with it, a step's freed memory serves the next step without a page fault."""

import platform
import resource
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STEP_OF_ALLOCATIONS = """
import resource, torch
from bench.memory import reuse_freed_memory
print(reuse_freed_memory())
faults = []
for _ in range(8):  # a training step in miniature: its activations (8 x 16 MiB) written, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.ones(4 << 20) for _ in range(8)]
    del held
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's options are glibc's")
def test_after_reuse_freed_memory_a_step_reuses_the_last_steps_memory():
    """Once the heap has grown to a step's size (two or three steps: a CI run faulted one tensor's pages in the
    third), each step writes its 128 MiB of activations into memory the step before freed: no page faults. (By
    default glibc may trim the freed top of the heap, and then every step faults its pages back in.)"""
    pages = 8 * (16 << 20) // resource.getpagesize()  # what one step writes
    proc = subprocess.run([sys.executable, "-c", STEP_OF_ALLOCATIONS], cwd=ROOT, capture_output=True, text=True,
                          check=True)  # fmt: skip
    took, faults = proc.stdout.splitlines()
    faults = [int(f) for f in faults.strip("[]").split(",")]
    assert took == "True"
    assert faults[0] >= 0.9 * pages  # the first step does fault its pages in: the count sees them
    assert sum(faults[4:]) < 0.01 * pages  # the last four steps fault nothing
