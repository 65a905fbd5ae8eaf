"""Ingest throughput on a few hundred real-photo files, and the cost of a no-op re-ingest.

    .venv/bin/python bench/ingest.py [--files 300] [--db sqlite|URL]

Files are crops, resizes and re-encodes of the photos in tests/fixtures/photos (so some are
near duplicates of each other, as in a real dump). Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench_photos import make_files  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--db", default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-ingest-"))
    src = work / "src"
    src.mkdir()
    make_files(src, args.files)
    total_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
    os.environ["ATELIER_HOME"] = str(work / "home")
    if args.db != "sqlite":
        os.environ["ATELIER_DATABASE_URL"] = args.db

    from flows.ingest import ingest, ingest_flow
    from store.db import Store, open_store

    open_store()
    warm = work / "warm"
    warm.mkdir()
    ingest_flow([str(warm)], "warm-up")  # starts Prefect's local API: not part of the figures
    start = time.perf_counter()
    first = ingest_flow([str(src)], "bench")
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    again = ingest_flow([str(src)], "bench")
    t_again = time.perf_counter() - start
    # the same work without Prefect, into a fresh store: orchestration overhead
    os.environ["ATELIER_HOME"] = str(work / "home-plain")
    plain_store = Store()
    start = time.perf_counter()
    ingest(plain_store, [src], "bench")
    t_plain = time.perf_counter() - start

    print(f"files: {args.files} ({total_mb:.1f} MB), database: {args.db}, cpus: {os.cpu_count()}")
    print(f"first ingest (Prefect flow): {t_first:.2f} s, {args.files / t_first:.1f} images/s "
          f"(added {first['added']}, near duplicates {len(first['near_duplicates'])}, rejected {len(first['rejected'])})")
    print(f"no-op re-ingest: {t_again:.2f} s (added {again['added']}, unchanged {again['unchanged']}), "
          f"ratio to first: {t_again / t_first:.2f}")
    print(f"plain-Python ingest (no Prefect): {t_plain:.2f} s; flow / plain: {t_first / t_plain:.2f}")


if __name__ == "__main__":
    main()
