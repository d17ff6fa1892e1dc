"""Cost of keying image data by content: cold (no cache) vs warm (cached) fingerprint of an image folder.

    python benchmarks/bench_fingerprint.py --data ../shared/data/cifar10/train --rounds 3

Each round, interleaved: the fingerprint with an empty hash cache (every file read and hashed),
the same with the cache just written (one stat per file), and the old key (name + size + label,
no content). Scanning the folder is timed once and left out of the three. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdeploy.data import scan_image_folder  # noqa: E402


def old_fingerprint(folder) -> str:
    h = hashlib.sha256()
    for f, y in zip(folder.files, folder.labels):
        h.update(f"{f.relative_to(folder.root)}|{f.stat().st_size}|{y}\n".encode())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t = time.perf_counter()
    folder = scan_image_folder(args.data)
    scan_s = time.perf_counter() - t
    total_mb = sum(f.stat().st_size for f in folder.files) / 1e6
    print(f"{len(folder)} files, {total_mb:.1f} MB, scan {scan_s:.2f} s, {os.cpu_count()} CPUs")
    times: dict[str, list[float]] = {"cold": [], "warm": [], "old (name+size)": []}
    keys = set()
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["MMDEPLOY_CACHE_DIR"] = cache
            for name in ("cold", "warm"):
                t = time.perf_counter()
                keys.add(folder.fingerprint())
                times[name].append(time.perf_counter() - t)
            cache_mb = sum(p.stat().st_size for p in Path(cache).iterdir()) / 1e6
        t = time.perf_counter()
        old_fingerprint(folder)
        times["old (name+size)"].append(time.perf_counter() - t)
    assert len(keys) == 1, "cold and warm fingerprints differ"
    old = statistics.median(times["old (name+size)"])
    print(f"hash cache file: {cache_mb:.1f} MB")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:>16}: median {med:7.3f} s  ({1e6 * med / len(folder):6.1f} us/file)  {med / old:6.2f}x old  runs {', '.join(f'{v:.3f}' for v in values)}")


if __name__ == "__main__":
    main()
