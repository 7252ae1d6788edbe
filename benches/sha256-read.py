#!/usr/bin/env python3
"""benches/sha256-read.py FILE... — does how a file is read change the speed of hashing it?

tally's manifest holds the sha256 of every input (the fingerprint stage reads each file
with 1 MiB reads). This hashes the given files with sha256 (Python's hashlib: OpenSSL,
which uses the CPU's SHA extensions like the `sha2` crate tally uses) reading them with
64 KiB, 128 KiB and 1 MiB buffers and through a memory map, after one read to warm the
page cache, and prints GB/s for each (best of 3). Compare the rows with each other.

    python3 benches/sha256-read.py /tmp/tally-bench/data-100m/usage/*/*.parquet
"""
import hashlib
import mmap
import sys
import time


def read_with(files, size):
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(size)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
        h.digest()


def mapped(files):
    for path in files:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            hashlib.sha256(m).digest()


def main():
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    total = 0
    for path in files:  # warm the page cache
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    ways = [(f"read {size >> 10} KiB", lambda s=size: read_with(files, s))
            for size in (64 << 10, 128 << 10, 1 << 20)]
    ways.append(("memory map", lambda: mapped(files)))
    print(f"{len(files)} files, {total / 1e9:.2f} GB")
    for name, run in ways:
        best = min(timed(run) for _ in range(3))
        print(f"{name:>14}: {total / 1e9 / best:.2f} GB/s")


def timed(run):
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
