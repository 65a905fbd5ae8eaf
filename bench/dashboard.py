"""Dashboard server time at scale: 100k images, 2M tags, on SQLite and PostgreSQL.

    .venv/bin/python bench/dashboard.py [--images 100000] [--tags-per-image 20] [--db sqlite|postgres|both]
    .venv/bin/python bench/dashboard.py --concurrency 20 [--workers 1,4] [--images 1500] [--db both]

With --concurrency N: N clients at once against `atelier serve --workers W` for each W (bench/concurrency.py),
p50/p95 of the grid page and the members API as the clients see them, beside the same app under
uvicorn's pure-Python h11 parser, asyncio's loop, 40 request threads, kept-alive connections left
where they were accepted and the collector unfrozen — the server as the issue measured it (--servers).
Target: p95 ≤ 150 ms.

Seeds a fresh store with bulk inserts (COPY on PostgreSQL), then reports p50/p95 of the app's own
time (its Server-Timing header) for the grid page without and with tag filters, the image view,
and a bulk edit of 10k images. Target: grid p95 ≤ 150 ms.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from dashboards.app import create_app  # noqa: E402
from store.db import Store  # noqa: E402
from store.models import Dataset, Image, Member, Score, Tag, User  # noqa: E402
from store.settings import Settings  # noqa: E402
from store.users import hash_password  # noqa: E402
from tests.postgres_cluster import throwaway_postgres  # noqa: E402
from bench.concurrency import run_concurrency  # noqa: E402

PASSWORD = "bench password"
TARGET_MS = 150.0


def bulk_insert(store: Store, model, columns: list[str], rows) -> None:
    """Insert many rows fast: COPY on PostgreSQL, executemany in big batches on SQLite."""
    table = model.__table__
    if store.engine.dialect.name == "postgresql":
        raw = store.engine.raw_connection()
        try:
            with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
        return
    batch: list[dict] = []
    with store.engine.begin() as connection:
        for row in rows:
            batch.append(dict(zip(columns, row)))
            if len(batch) == 50_000:
                connection.execute(insert(table), batch)
                batch = []
        if batch:
            connection.execute(insert(table), batch)


def seed(store: Store, images: int, tags_per_image: int, vocabulary: int = 3000) -> dict:
    """A dataset 'bench' of `images` members with `tags_per_image` tags each (Zipf-like frequencies)."""
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    with store.session() as session:
        session.add(User(name="curator", role="curator", password_hash=hash_password(PASSWORD)))
        session.add(Dataset(name="bench"))
    words = [f"tag_{i}" for i in range(vocabulary)]
    weights = [1.0 / (i + 1) ** 0.9 for i in range(vocabulary)]
    bulk_insert(store, Image, ["id", "sha256", "phash", "width", "height", "format", "ext", "byte_size", "mode",
                               "exif_orientation", "created_at"],
                ((i, f"{rng.getrandbits(256):064x}", "0" * 16, 1024, 1024, "JPEG", "jpg", 100_000, "RGB", 1, now)
                 for i in range(1, images + 1)))
    bulk_insert(store, Member, ["id", "dataset_id", "image_id", "source_path", "status", "caption", "revision",
                                "added_at"],
                ((i, 1, i, f"photos/{i:06d}.jpg", "excluded" if i % 50 == 0 else "active", f"caption {i}", 1, now)
                 for i in range(1, images + 1)))

    def tag_rows():
        for member in range(1, images + 1):
            chosen = set()
            while len(chosen) < tags_per_image:
                chosen.update(rng.choices(words, weights, k=tags_per_image - len(chosen)))
            for position, word in enumerate(chosen):
                status = "suggested" if rng.random() < 0.8 else rng.choice(["accepted", "rejected"])
                yield (member, word, "model:wd14", "general", round(rng.random(), 3), status, position, now)

    bulk_insert(store, Tag, ["member_id", "text", "source", "category", "confidence", "status", "position",
                             "updated_at"], tag_rows())
    bulk_insert(store, Score, ["member_id", "name", "value", "source", "created_at"],
                ((m, name, round(rng.uniform(1, 10), 3), "bench", now)
                 for m in range(1, images + 1) for name in ("aesthetic", "sharpness")))
    with store.engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    return {"common": words[0], "middle": words[50], "rare": words[2000]}


def timed(client: TestClient, method: str, url: str, **kwargs) -> float:
    response = client.request(method, url, **kwargs)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return float(response.headers["server-timing"].split("dur=")[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(url: str, label: str, images: int, tags_per_image: int, repeats: int) -> list[tuple]:
    home = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    store = Store(Settings(home=home, database_url=url, blobs_url=str(home / "blobs"), models_dir=home / "models"))
    start = time.perf_counter()
    tags = seed(store, images, tags_per_image)
    seeded = time.perf_counter() - start
    print(f"[{label}] seeded {images:,} images and {images * tags_per_image:,} tags in {seeded:.1f} s", flush=True)
    rng = random.Random(1)
    results = []
    with TestClient(create_app(store)) as client:
        client.headers["X-CSRF-Token"] = client.post(
            "/api/login", json={"name": "curator", "password": PASSWORD}).json()["csrf_token"]
        scenarios = {
            "grid page (no filter)": lambda: f"/d/bench?page={rng.randint(1, 50)}",
            "grid page, common tag": lambda: f"/d/bench?tags_all={tags['common']}&page={rng.randint(1, 5)}",
            "grid page, rare tag": lambda: f"/d/bench?tags_all={tags['rare']}",
            "grid page, and/or/not": lambda: (f"/d/bench?tags_all={tags['middle']}&tags_any={tags['common']},"
                                              f"tag_7&tags_none=tag_3"),
            "grid page, sort by aesthetic": lambda: f"/d/bench?sort=score:aesthetic&page={rng.randint(1, 5)}",
            "grid page, aesthetic ≥ 8 + unreviewed": lambda: "/d/bench?min_aesthetic=8&unreviewed=1",
            "image view": lambda: f"/d/bench/m/{rng.randint(1, images // 50 * 49)}",
        }
        for name, make in scenarios.items():
            timed(client, "GET", make())  # warm caches once
            times = [timed(client, "GET", make()) for _ in range(repeats)]
            results.append((label, name, statistics.median(times), pct(times, 0.95)))
            print(f"[{label}] {name:40} p50 {results[-1][2]:8.1f} ms   p95 {results[-1][3]:8.1f} ms", flush=True)
        bulk = []
        for round_ in range(3):
            ids = rng.sample(range(1, images + 1), 10_000)
            bulk.append(timed(client, "POST", "/api/datasets/bench/bulk",
                              json={"op": "add", "tag": f"bulk_{round_}", "member_ids": ids}))
        results.append((label, "bulk edit of 10k images (add tag)", statistics.median(bulk), max(bulk)))
        print(f"[{label}] {'bulk edit of 10k images (add tag)':40} p50 {results[-1][2]:8.1f} ms   "
              f"max {results[-1][3]:8.1f} ms", flush=True)
    store.dispose()
    shutil.rmtree(home, ignore_errors=True)
    return results


def concurrent(url: str, label: str, args) -> list[tuple]:
    home = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    store = Store(Settings(home=home, database_url=url, blobs_url=str(home / "blobs"), models_dir=home / "models"))
    seed(store, args.images, args.tags_per_image)
    store.dispose()
    pages = max(1, args.images // 48)
    workers = [int(w) for w in args.workers.split(",")]
    try:
        return run_concurrency(home, url, label, PASSWORD, args.concurrency, workers, args.requests, pages,
                               args.servers.split(","))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main_concurrency(args) -> None:
    results = []
    if args.db in ("sqlite", "both"):
        path = Path(tempfile.mkdtemp(prefix="atelier-bench-db-")) / "atelier.db"
        results += concurrent(f"sqlite:///{path}", "sqlite", args)
    if args.db in ("postgres", "both"):
        with throwaway_postgres() as server:
            results += concurrent(f"{server}/postgres", "postgres", args)
    print(f"\nsummary: {args.concurrency} concurrent clients, {args.images:,} images × {args.tags_per_image} tags, "
          f"client-side latency (ms; target p95 ≤ {TARGET_MS:.0f} ms)")
    baseline = {(label, w, name): p95 for label, server, w, name, _, p95, *_ in results if server == "before"}
    for label, server, w, name, p50, p95, mean, alone, client_cpu in results:
        ratio = (f"  {p95 / baseline[label, w, name]:.2f}× the baseline's p95"
                 if server != "before" and (label, w, name) in baseline else "")
        print(f"  {label:9} {server:7} workers {w}  {name:12} p50 {p50:6.1f}  p95 {p95:6.1f}  mean {mean:6.1f}  "
              f"alone p50 {alone:5.1f}  "
              f"client CPU {client_cpu:4.1f} ms/req  {'meets' if p95 <= TARGET_MS else 'misses'} the target{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="default 100000 (1500 with --concurrency)")
    parser.add_argument("--tags-per-image", type=int, default=20)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=0, help="N clients at once against atelier serve")
    parser.add_argument("--workers", default="1,2,4", help="with --concurrency: uvicorn worker counts to compare")
    parser.add_argument("--requests", type=int, default=60,
                        help="with --concurrency: requests per client (60 × 20 clients: a p95 that holds from run to run)")
    parser.add_argument("--servers", default="atelier,before",
                        help="with --concurrency: atelier (as shipped) and/or before (the baseline)")
    args = parser.parse_args()
    if args.concurrency:
        args.images = args.images or 1500
        return main_concurrency(args)
    args.images = args.images or 100_000
    results = []
    if args.db in ("sqlite", "both"):
        path = Path(tempfile.mkdtemp(prefix="atelier-bench-db-")) / "atelier.db"
        results += run(f"sqlite:///{path}", "sqlite", args.images, args.tags_per_image, args.repeats)
    if args.db in ("postgres", "both"):
        with throwaway_postgres() as server:
            url = f"{server}/postgres"
            results += run(url, "postgres", args.images, args.tags_per_image, args.repeats)
    print("\nsummary (server time, ms; grid target p95 ≤ 150 ms)")
    for label, name, p50, p95 in results:
        verdict = f"{p95 / TARGET_MS:5.2f}× target" if name.startswith("grid") else ""
        print(f"  {label:9} {name:40} p50 {p50:8.1f}  p95 {p95:8.1f}  {verdict}")


if __name__ == "__main__":
    main()
