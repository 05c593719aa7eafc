"""Benchmark the vector-store adapters through the port, as learnloop calls them.

Why: the embedded engine must keep a search inside one group fast as the store
grows, and we want numbers, not hopes, for choosing between adapters. Compares
the edge store (temp dir on local disk) with qdrant-client's local mode
(``:memory:``, pure Python; it stands in for the client code path, not for a
server's speed).

    python benchmarks/store_bench.py --points 20000 --groups 100 --dim 384

Measures: upsert time for N points of D dims over G groups (batches of
``--batch``, like a worker publishing), then p50/p99 latency of searches
filtered to one random group and of unfiltered searches (top 10, fresh random
query vectors, after a short warm-up), and the process CPU per filtered search
(all threads: edge searches on a pool of ``--edge-search-threads``). Every
filtered hit is checked to belong to the requested group.

    python benchmarks/store_bench.py --points 200000 --groups 1000 --backends edge \
        --edge-search-threads 1,default
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import statistics
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from qdrant_client import AsyncQdrantClient

from learnloop.store import Point, VectorStore
from learnloop.store.edge import EdgeVectorStore
from learnloop.store.qdrant_server import QdrantServerStore

COLLECTION = "bench"
FIELDS = ("group", "kind", "status", "version")
NS = uuid.UUID("0b6a0c5e-2f7d-4a0e-9a43-8f1e6c1d2b7a")


@dataclass
class Row:
    backend: str
    points: int
    upsert_s: float | None = None
    filtered: tuple[float, float] | None = None
    unfiltered: tuple[float, float] | None = None
    note: str = ""
    cpu_ms: float | None = None  # process CPU per filtered search, all threads


def percentiles_ms(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[98] * 1e3


def make_points(n: int, dim: int, groups: int, seed: int) -> list[Point]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32).tolist()
    return [
        Point(
            str(uuid.uuid5(NS, f"p{i}")),
            vectors[i],
            {
                "group": f"user:{i % groups}",
                "kind": "memory" if i % 4 else "example",
                "status": "active",
                "version": i % 7,
                "text": f"memory item {i}",
            },
        )
        for i in range(n)
    ]


async def time_searches(
    store: VectorStore, queries: np.ndarray, groups: int, filtered: bool, seed: int
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    samples: list[float] = []
    for k, query in enumerate(queries.tolist()):
        group = f"user:{int(rng.integers(groups))}"
        where = {"group": group} if filtered else None
        start = time.perf_counter()
        hits = await store.search(COLLECTION, query, where=where, limit=10)
        samples.append(time.perf_counter() - start)
        if filtered and any(h.payload["group"] != group for h in hits):
            raise AssertionError(f"query {k}: a hit outside {group}")
        if not hits:
            raise AssertionError(f"query {k}: no hits")
    return percentiles_ms(samples)


async def run_backend(
    name: str,
    factory: Callable[[], VectorStore],
    points: list[Point],
    args: argparse.Namespace,
    queries: np.ndarray,
) -> list[Row]:
    store = factory()
    rows: list[Row] = []
    try:
        await store.ensure_collection(COLLECTION, args.dim, FIELDS)
        start = time.perf_counter()
        for i in range(0, len(points), args.batch):
            await store.upsert(COLLECTION, points[i : i + args.batch])
        upsert_s = time.perf_counter() - start
        if await store.count(COLLECTION) != len(points):
            raise AssertionError("count after upsert does not match")
        warm = queries[: min(20, len(queries))]
        await time_searches(store, warm, args.groups, True, 99)
        await time_searches(store, warm, args.groups, False, 99)
        cpu = time.process_time()
        filtered = await time_searches(store, queries, args.groups, True, 1)
        cpu_ms = (time.process_time() - cpu) / len(queries) * 1e3
        rows.append(
            Row(
                name,
                len(points),
                upsert_s,
                filtered,
                await time_searches(store, queries, args.groups, False, 2),
                cpu_ms=cpu_ms,
            )
        )
        if args.edge_optimize and isinstance(store, EdgeVectorStore):
            start = time.perf_counter()
            changed = await store.optimize(COLLECTION)
            took = time.perf_counter() - start
            rows.append(
                Row(
                    f"{name} +optimize",
                    len(points),
                    None,
                    await time_searches(store, queries, args.groups, True, 1),
                    await time_searches(store, queries, args.groups, False, 2),
                    note=f"optimize() {'built' if changed else 'no-op'} in {took:.1f} s",
                )
            )
    finally:
        await store.close()
    return rows


def _pair(pair: tuple[float, float] | None, width: int) -> str:
    if pair is None:
        return f"{'-':>{width}}" * 2
    return f"{pair[0]:>{width}.3f}{pair[1]:>{width}.3f}"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    versions = ", ".join(
        f"{pkg} {importlib.metadata.version(pkg)}" for pkg in ("qdrant-edge-py", "qdrant-client")
    )
    print(
        f"\n{args.points} points x {args.dim} dims, {args.groups} groups "
        f"(~{args.points // args.groups}/group), {args.queries} queries, top-10, "
        f"{os.cpu_count()} CPUs; {versions}"
    )
    header = (
        f"{'backend':<24}{'upsert s':>10}{'points/s':>11}"
        f"{'group p50 ms':>14}{'group p99 ms':>14}{'group CPU ms':>14}"
        f"{'all p50 ms':>12}{'all p99 ms':>12}  note"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.upsert_s is None:
            upsert = f"{'-':>10}{'-':>11}"
        else:
            upsert = f"{row.upsert_s:>10.2f}{row.points / row.upsert_s:>11,.0f}"
        cpu = f"{row.cpu_ms:>14.3f}" if row.cpu_ms is not None else f"{'-':>14}"
        line = f"{row.backend:<24}{upsert}{_pair(row.filtered, 14)}{cpu}{_pair(row.unfiltered, 12)}"
        print(f"{line}  {row.note}".rstrip())


async def main(args: argparse.Namespace) -> None:
    points = make_points(args.points, args.dim, args.groups, seed=0)
    queries = np.random.default_rng(1).standard_normal((args.queries, args.dim), dtype=np.float32)
    rows: list[Row] = []
    if "edge" in args.backends:
        for threads in args.edge_search_threads:
            rows += await run_backend(
                f"edge (disk), {threads or 'default'} thr",
                lambda t=threads: EdgeVectorStore(None, search_threads=t),
                points,
                args,
                queries,
            )
    if "local" in args.backends:
        if args.points > args.local_max_points:
            rows.append(
                Row(
                    "qdrant-client :memory:",
                    args.points,
                    note=f"skipped: over --local-max-points {args.local_max_points}",
                )
            )
        else:
            rows += await run_backend(
                "qdrant-client :memory:",
                lambda: QdrantServerStore.from_client(AsyncQdrantClient(location=":memory:")),
                points,
                args,
                queries,
            )
    print_table(rows, args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300, help="per search kind")
    parser.add_argument("--batch", type=int, default=1000, help="points per upsert call")
    parser.add_argument(
        "--backends", default="edge,local", help="comma list of: edge, local (default both)"
    )
    parser.add_argument(
        "--local-max-points",
        type=int,
        default=50_000,
        help="skip qdrant-client local mode above this size (it is pure Python)",
    )
    parser.add_argument(
        "--edge-optimize",
        action="store_true",
        help="also build edge's HNSW index with optimize() and measure again",
    )
    parser.add_argument(
        "--edge-search-threads",
        default="1",
        help="comma list of edge search pool sizes to compare ('default': edge's own choice)",
    )
    args = parser.parse_args(argv)
    args.edge_search_threads = [
        None if t.strip() == "default" else int(t) for t in args.edge_search_threads.split(",")
    ]
    args.backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    if unknown := args.backends - {"edge", "local"}:
        parser.error(f"unknown backends: {sorted(unknown)}")
    return args


if __name__ == "__main__":
    # Local mode warns that payload indexes do nothing there; expected, not news.
    warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
    asyncio.run(main(parse_args()))
