"""Peak memory of this process split in two: its own (RssAnon: what must fit) and the pages of memory-mapped files it
has read (RssFile: Arrow datasets are memory-mapped, and the kernel drops those pages whenever memory runs short).

A process's max RSS (ru_maxrss) counts both, so it grows with the corpus for any reader of a memory-mapped file,
streaming or not; the anonymous peak is the one that says whether a stage holds the corpus in memory.

    with peaks() as p:
        run_the_stage()
    p -> {"peak_anon_mb": 279, "peak_file_mb": 90}   # sampled every 50 ms; {} where /proc is absent (not Linux)
"""

import ctypes
import json
import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def rss_kinds() -> dict[str, int]:
    """{RssAnon, RssFile: MB} of this process now, from /proc/self/status; {} where there is none (not Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("RssAnon", "RssFile") if k in fields}


def sample_peaks(peaks: dict[str, int], stop: threading.Event, every: float = 0.05) -> None:
    """Keep in `peaks` the largest of each rss_kinds() value until `stop` is set (and once more after)."""
    while True:
        for k, v in rss_kinds().items():
            peaks[k] = max(peaks.get(k, 0), v)
        if stop.wait(every):
            return


@contextmanager
def peaks(every: float = 0.05) -> Iterator[dict[str, int]]:
    """Samples this process's memory while the block runs; the dict holds peak_anon_mb and peak_file_mb after it."""
    raw, out, stop = {}, {}, threading.Event()
    sampler = threading.Thread(target=sample_peaks, args=(raw, stop, every), daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        out.update({f"peak_{k.removeprefix('Rss').lower()}_mb": v for k, v in raw.items()})


def run_child(cmd: list[str], env: dict | None = None) -> tuple[dict, int]:
    """(the JSON of a child process's last stdout line, its peak RSS in MB); a failed child stops the bench with the
    end of its stderr (kept in a file, not a pipe: datatrove logs more than a pipe holds)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            err.seek(0)
            raise SystemExit(f"{shlex.join(cmd)} failed ({status}):\n{err.read()[-3000:]}")
    return json.loads(out.splitlines()[-1]), usage.ru_maxrss // 1024


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt options (malloc.h)


def reuse_freed_memory(mmap_below: int = 32 << 20, trim_above: int = 1 << 30) -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step instead of handing it back to
    the kernel: blocks under `mmap_below` (32 MiB, glibc's largest) come from the heap, and the heap is trimmed only
    when more than `trim_above` of it is free. True where it took effect (glibc); a no-op elsewhere. Process-wide.

    Every step allocates and frees the same activations (a (4096, 1024) MLP hidden is 16 MiB). By default glibc may
    trim the freed top of the heap, and the next step's first write to each page faults it back in. The benches
    measure what this changes (bench.pretrain_ops: our step with and without it; bench.pretrain: Trainer with and
    without it). The pretrain stage does not call it: it gains little, and a killed-and-resumed run once ended with
    weights that were not bitwise those of an uninterrupted one with it on (a CI run; its cause was not found).
    """
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
    except (OSError, TypeError):  # a platform without dlopen(NULL)
        return False
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_below)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_above))
