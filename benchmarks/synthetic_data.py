"""Benchmark the synthetic generator: time and peak memory for one `generate_synthetic` call.

    .venv/bin/python benchmarks/synthetic_data.py                 # 10M interactions
    .venv/bin/python benchmarks/synthetic_data.py -n 1000000 --tracemalloc --write /tmp/syn

Prints one line. Peak RSS (`resource.getrusage`) is the whole process's high-water mark, so
the line also gives the resident size before generating (interpreter + numpy + pandas).
`--tracemalloc` adds the peak of memory allocated during generation (numpy reports its
buffers to tracemalloc); it slows the run a little, so it is off by default.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
import tracemalloc

import _common  # noqa: F401  (first: the repository root on sys.path)

from twotower_utils.data.datasets import generate_synthetic, write_dataset


def _rss_mib() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> str:
    """Parse `argv`, generate once, print and return the one-line report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=None,
                        help="default: interactions / 100 (100 per user on average)")
    parser.add_argument("--items", type=int, default=None,
                        help="default: interactions / 500, at least 100")
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--exponent", type=float, default=1.0, help="Zipf popularity exponent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace allocations")
    parser.add_argument("--write", metavar="DIR", help="also time write_dataset into DIR")
    args = parser.parse_args(argv)
    users = args.users or max(args.interactions // 100, 10)
    items = args.items or max(args.interactions // 500, 100)

    before = _rss_mib()
    if args.tracemalloc:
        tracemalloc.start()
    start = time.perf_counter()
    raw = generate_synthetic(users, items, args.interactions, args.clusters, args.exponent,
                             args.seed)
    seconds = time.perf_counter() - start
    traced = ""
    if args.tracemalloc:
        traced = f", tracemalloc peak {tracemalloc.get_traced_memory()[1] / (1 << 30):.2f} GiB"
        tracemalloc.stop()
    written = ""
    if args.write:
        start = time.perf_counter()
        write_dataset(raw, args.write)
        written = f", write_dataset {time.perf_counter() - start:.1f} s"
    found = re.search(r"\((\d+%) of interactions inside", raw.notes[0])
    share = found.group(1) if found else "?"
    line = (
        f"synthetic: {len(raw.interactions):,} interactions ({users:,} users, {items:,} items, "
        f"{args.clusters} clusters, {share} in-cluster) generated in {seconds:.1f} s; "
        f"peak RSS {_rss_mib() / 1024:.2f} GiB ({before:.0f} MiB before generating){traced}"
        f"{written}"
    )
    print(line)
    return line


if __name__ == "__main__":
    main()
