"""Peak memory of loading a data file, relative to the loaded int64 states (sizing ``data.max_bytes``).

Each case writes a file whose data become 512 MiB of int64 states (64 Mi sites), then loads it in a fresh
process and reports the increase of the peak resident set size (``ru_maxrss``) over the loader's imports:

    python benchmarks/data_load_memory.py            # .npy (uint8), text, gzip FASTA; about a minute

A load peaks at about 2-2.5 x the int64 states (the states, the copies made by the train/val/test split,
and the file's bytes), so the default ``data.max_bytes`` of 1 GiB keeps a load under about 2.5 GiB.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SITES = 1 << 26
CASES = {"npy": ("array", "x.npy", {}), "text": ("text", "x.txt", {"seq_len": 256}),
         "fasta": ("fasta", "x.fa.gz", {"seq_len": 256})}


def write(case: str, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / CASES[case][1]
    if case == "npy":
        np.save(path, rng.integers(0, 17, (SITES // 16, 16), dtype=np.uint8))
    elif case == "text":
        path.write_bytes(rng.integers(97, 123, SITES, dtype=np.uint8).tobytes())
    else:
        seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, SITES)].tobytes()
        path.write_bytes(gzip.compress(b">r\n" + seq + b"\n", 1))
    return path


def measure(case: str, path: Path) -> None:
    from discrete_diffusion.data import load_dataset

    def rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    base = rss()
    name, _, options = CASES[case]
    ds = load_dataset(name, path=path, **options)
    states = sum(ds.split(s).numel() for s in ("train", "val", "test")) * 8
    peak = rss() - base
    print(f"{case:6s} file {path.stat().st_size / 2**20:5.0f} MiB  int64 states {states / 2**20:5.0f} MiB  "
          f"peak RSS increase {peak / 2**20:5.0f} MiB = {peak / states:.2f} x states")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(CASES), default=None, help="(internal) measure one case")
    parser.add_argument("--path", default=None, help="(internal) the file of --case")
    args = parser.parse_args()
    if args.case is not None:
        measure(args.case, Path(args.path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            path = write(case, Path(tmp))
            subprocess.run([sys.executable, __file__, "--case", case, "--path", str(path)], check=True)
            path.unlink()


if __name__ == "__main__":
    main()
