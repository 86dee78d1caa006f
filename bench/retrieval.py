"""How much faster is IVF than exact kNN, and what does it cost in recall? (`./run.sh bench retrieval`)

Why: a recognition gallery grows to millions of images (1.5 M in Landmark Recognition), where
exact search of every query against every image is the bottleneck. `common.retrieval.index.build_index`
switches from exact (IndexFlatIP) to IVF above `exact_max`; this bench measures what that buys
and what it loses, on the vectors such a gallery holds: 512-d, L2-normalised and clustered at two
scales (Zipf-sized classes of 2 to 5000 images, each made of views of about 10 near-duplicate
images; see `clustered_vectors`), not uniform noise, on which no index can beat brute force.
`view_size=1` gives classes without views (isotropic noise around the class centre): the worst
case for IVF, where a query's exact nearest neighbour is a coin toss among its class's images
spread over several lists, so recall@1 needs a larger nprobe.

Per gallery size: build time, queries per second (all queries in one batched call), recall@1
(the IVF's first neighbour is the exact first neighbour) and recall@10 (overlap of the ten
nearest) against exact search, and the index's memory. IVF is built through `build_index` with
nlist about 2 sqrt(n) trained on 64 x nlist vectors (k-means on all n costs more than it gains on
a CPU), and searched at several nprobe; an IVF-PQ row shows the memory / recall trade-off. Each
search is timed as the best of `repeats` runs, since a shared machine's load comes and goes.
Target at 1 M: IVF at least 10x faster than exact with recall@1 >= 0.95.

Usage: `./run.sh bench retrieval [sizes=100000,1000000] [dim=512] [queries=1000]
[nprobe=4,8,16,32,64] [nlist=auto] [pq_m=64] [repeats=3] [threads=N] [seed=0]
[mean_class=20] [max_class=5000] [view_size=10] [view_spread=0.6] [noise=0.5]
[out=outputs/bench/retrieval.md]`.
Peak memory is about 3 x n x dim x 4 bytes (6 GB at 1 M x 512).
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import faiss
import numpy as np
import yaml

from common.core.config import split_overrides
from common.core.errors import ConfigError
from common.core.paths import REPO_ROOT
from common.retrieval.index import build_index, search

OPTIONS = {"sizes": "100000,1000000", "dim": 512, "queries": 1000, "nprobe": "4,8,16,32,64", "pq_m": 64,
           "nlist": "auto", "repeats": 3, "threads": 0, "seed": 0, "out": "outputs/bench/retrieval.md",
           "mean_class": 20, "max_class": 5000, "view_size": 10, "view_spread": 0.6, "noise": 0.5}
TARGET_SPEEDUP, TARGET_RECALL1 = 10.0, 0.95


# ---------------------------------------------------------------------------------------------
# Data: clustered unit vectors
# ---------------------------------------------------------------------------------------------
def class_sizes(n: int, mean_class: int, max_class: int, rng) -> np.ndarray:
    """Zipf-like class sizes (long tail of small classes, a few big ones up to `max_class`) summing to n."""
    n_classes = max(1, n // mean_class)
    weights = 1.0 / np.arange(1, n_classes + 1) ** 0.8
    sizes = np.clip(np.round(weights / weights.sum() * n), 2, max_class).astype(np.int64)
    while sizes.sum() != n:  # spread the rounding/clipping remainder over the classes that still have room
        gap = n - sizes.sum()
        room = np.flatnonzero(sizes < max_class) if gap > 0 else np.flatnonzero(sizes > 2)
        step = np.sign(gap) * np.ones(min(abs(gap), len(room)), np.int64)
        sizes[rng.choice(room, size=len(step), replace=False)] += step
    return sizes


@dataclass
class Geometry:
    """Where the vectors come from: class centres, views (viewpoints) of each class, image noise."""

    mean_class: int = 20      # images per class on average (GLR2020: 1.6 M images, 81 k classes)
    max_class: int = 5000     # the largest class (GLR2020: about 6 k)
    view_size: int = 10       # images per view of a class on average; 1 = no views (isotropic classes)
    view_spread: float = 0.6  # norm of a view's offset from its class centre (the centre has norm 1)
    noise: float = 0.5        # norm of an image's offset from its view


def _unit_rows(rng, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_vectors(n: int, dim: int, seed: int = 0, geometry: Geometry = Geometry(), chunk: int = 65536):
    """`n` unit vectors shaped like a landmark gallery's embeddings: class -> view -> image.

    Class sizes are Zipf-like (2 to `max_class`); each class is split into views of about
    `view_size` images (one viewpoint, one season, near-duplicates); an image is
    centre + view_spread x (view direction) + noise x (its own direction), normalised. With the
    defaults the cosine is about 0.85 within a view, 0.6 within a class, 0 across classes: the
    multi-scale clustering of margin-trained embeddings. Returns (vectors float32 [n, dim],
    view per row, view centres); built chunk by chunk so peak memory is the output plus one chunk.
    """
    g = geometry
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, g.mean_class, g.max_class, rng)
    centres = _unit_rows(rng, len(sizes), dim)
    n_views = np.maximum(1, np.round(sizes / max(1, g.view_size))).astype(np.int64)
    view_class = np.repeat(np.arange(len(sizes)), n_views)
    view_centres = centres[view_class] + (g.view_spread if g.view_size > 1 else 0.0) * _unit_rows(rng, len(view_class), dim)
    first_view = np.concatenate([[0], np.cumsum(n_views)[:-1]])
    image_class = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    views = first_view[image_class] + rng.integers(0, n_views[image_class])  # a random view of its class
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        rows = views[start:start + chunk]
        block = view_centres[rows] + g.noise * _unit_rows(rng, len(rows), dim)
        vectors[start:start + len(rows)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors, views, view_centres


def queries_like(view_centres: np.ndarray, views: np.ndarray, n_queries: int, seed: int,
                 geometry: Geometry = Geometry()) -> np.ndarray:
    """New images of existing views (a view as often as it has gallery images), as unit vectors."""
    rng = np.random.default_rng([seed, 1])
    picked = views[rng.integers(0, len(views), n_queries)]
    block = view_centres[picked] + geometry.noise * _unit_rows(rng, n_queries, view_centres.shape[1])
    return block / np.linalg.norm(block, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact k nearest that the index also returns among its k (k=1: same first)."""
    found, exact = found[:, :k], exact[:, :k]
    hits = (found[:, :, None] == exact[:, None, :]).any(axis=1).sum(axis=1)
    return float(np.mean(hits / k))


def index_bytes(index: faiss.Index) -> int:
    """Memory held by the index's vectors (or codes), ids and coarse quantiser."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return int(index.ntotal) * int(index.d) * 4
    coarse = int(ivf.nlist) * int(ivf.d) * 4
    pq = faiss.downcast_index(ivf)
    codebooks = int(pq.pq.M * pq.pq.ksub * pq.pq.dsub) * 4 if hasattr(pq, "pq") else 0
    return int(ivf.ntotal) * (int(ivf.code_size) + 8) + coarse + codebooks


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = int(nprobe)
    else:  # a GPU index
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))


def timed_search(index, queries: np.ndarray, k: int, repeats: int = 1):
    """Ids of the k nearest, and the best of `repeats` timings (the machine is shared: the minimum
    is the least disturbed measurement)."""
    best = math.inf
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        _, ids = search(index, queries, k)
        best = min(best, time.perf_counter() - started)
    return ids, best


def auto_nlist(n: int) -> int:
    """About 2 sqrt(n) lists, a power of two (faiss suggests 4-16 sqrt(n); fewer train faster on a CPU)."""
    return int(2 ** round(math.log2(2 * math.sqrt(n))))


def bench_size(n: int, dim: int, n_queries: int, nprobes: list[int], pq_m: int | None, seed: int,
               geometry: Geometry = Geometry(), nlist: int | None = None, repeats: int = 3, log=print) -> list[dict]:
    """Rows of the table for one gallery size: exact, IVF at every nprobe, IVF-PQ."""
    started = time.perf_counter()
    gallery, views, view_centres = clustered_vectors(n, dim, seed, geometry)
    queries = queries_like(view_centres, views, n_queries, seed, geometry)
    log(f"n={n:,}: {len(view_centres):,} views, data in {time.perf_counter() - started:.1f}s", flush=True)
    rows = []

    started = time.perf_counter()
    exact_index = build_index(gallery, exact_max=n)
    build = time.perf_counter() - started
    exact_ids, seconds = timed_search(exact_index, queries, 10, repeats)
    exact_qps = n_queries / seconds
    rows.append({"n": n, "index": "exact (IndexFlatIP)", "nprobe": "", "build_s": build, "qps": exact_qps,
                 "speedup": 1.0, "recall1": 1.0, "recall10": 1.0, "mib": index_bytes(exact_index) / 2**20})
    log(f"  exact: build {build:.1f}s, {exact_qps:,.0f} queries/s", flush=True)
    del exact_index

    nlist = int(nlist or auto_nlist(n))
    variants = [("IVF-Flat", None, nprobes)] + ([(f"IVF-PQ{pq_m}", pq_m, [max(nprobes)])] if pq_m else [])
    for name, m, probes in variants:
        started = time.perf_counter()
        index = build_index(gallery, exact_max=0, nlist=nlist, nprobe=probes[0], pq_m=m, train_size=64 * nlist,
                            seed=seed)
        build = time.perf_counter() - started
        for nprobe in probes:
            set_nprobe(index, nprobe)
            ids, seconds = timed_search(index, queries, 10, repeats)
            row = {"n": n, "index": f"{name} nlist={nlist}", "nprobe": nprobe, "build_s": build,
                   "qps": n_queries / seconds, "speedup": exact_qps and (n_queries / seconds) / exact_qps,
                   "recall1": recall_at(ids, exact_ids, 1), "recall10": recall_at(ids, exact_ids, 10),
                   "mib": index_bytes(index) / 2**20}
            rows.append(row)
            log(f"  {row['index']} nprobe={nprobe}: {row['qps']:,.0f} q/s ({row['speedup']:.1f}x), "
                f"recall@1 {row['recall1']:.3f}, recall@10 {row['recall10']:.3f}", flush=True)
        del index
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown_table(rows: list[dict]) -> str:
    columns = [("n", "gallery", lambda v: f"{v:,}"), ("index", "index", str), ("nprobe", "nprobe", str),
               ("build_s", "build s", lambda v: f"{v:.1f}"), ("qps", "queries/s", lambda v: f"{v:,.0f}"),
               ("speedup", "vs exact", lambda v: f"{v:.1f}x"), ("recall1", "recall@1", lambda v: f"{v:.3f}"),
               ("recall10", "recall@10", lambda v: f"{v:.3f}"), ("mib", "memory MiB", lambda v: f"{v:,.0f}")]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "|".join("---" if key == "index" else "---:" for key, _, _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """Whether the largest size meets the target, and with which nprobe."""
    largest = max(r["n"] for r in rows)
    ivf = [r for r in rows if r["n"] == largest and r["index"].startswith("IVF-Flat")]
    good = [r for r in ivf if r["speedup"] >= TARGET_SPEEDUP and r["recall1"] >= TARGET_RECALL1]
    if good:
        best = max(good, key=lambda r: r["speedup"])
        return (f"Target met at {largest:,}: IVF nprobe={best['nprobe']} is {best['speedup']:.1f}x faster than exact "
                f"with recall@1 {best['recall1']:.3f} (target >= {TARGET_SPEEDUP:.0f}x, >= {TARGET_RECALL1}).")
    return (f"Target NOT met at {largest:,}: no IVF nprobe reaches {TARGET_SPEEDUP:.0f}x with recall@1 >= "
            f"{TARGET_RECALL1} on this machine.")


def parse_options(argv: list[str]) -> dict:
    pairs = split_overrides(argv)
    unknown = sorted(set(pairs) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    options = {**OPTIONS, **{k: yaml.safe_load(v) for k, v in pairs.items()}}
    for key in ("sizes", "nprobe"):
        value = options[key]
        options[key] = [int(v) for v in (str(value).split(",") if not isinstance(value, list) else value)]
    if options["pq_m"] in (0, None, False, "none"):
        options["pq_m"] = None
    return options


def main(argv: list[str]) -> int:
    try:
        options = parse_options(argv)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}\n{__doc__.split('Usage: ')[1].split(chr(10) + chr(10))[0]}", file=sys.stderr)
        return 2
    if options["threads"]:
        faiss.omp_set_num_threads(int(options["threads"]))
    defaults = Geometry()
    geometry = Geometry(**{f.name: type(getattr(defaults, f.name))(options[f.name]) for f in fields(Geometry)})
    started = time.time()
    rows = []
    for n in options["sizes"]:
        nlist = None if options["nlist"] in ("auto", None) else int(options["nlist"])
        rows += bench_size(n, int(options["dim"]), int(options["queries"]), options["nprobe"], options["pq_m"],
                           int(options["seed"]), geometry, nlist, int(options["repeats"]))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    text = "\n".join([
        "# Retrieval: exact vs IVF (`./run.sh bench retrieval`)", "",
        f"{options['dim']}-d L2-normalised clustered vectors: class -> view -> image ({geometry}); "
        f"{options['queries']:,} queries = new images of existing views, searched in one batch, k=10; "
        f"recall against exact search; query time = best of {options['repeats']} runs.",
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} thread(s), {os.cpu_count()} CPU(s), "
        f"GPUs seen by faiss: {faiss.get_num_gpus()}; load average {os.getloadavg()[0]:.1f} at the end "
        f"(the machine is shared, so absolute speeds vary); peak RSS {peak_gib:.1f} GiB; "
        f"{(time.time() - started) / 60:.1f} min.", "",
        markdown_table(rows), "", verdict(rows), ""])
    out = Path(options["out"])
    out = out if out.is_absolute() else REPO_ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
