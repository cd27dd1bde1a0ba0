"""Scale benchmark of Sim-Div selection + dedup (docs/method.md §5) on synthetic unit vectors.

For each pool size (10K, 100K, 1M; dim 384 like MiniLM) it times, in a fresh subprocess so peak RSS is per
size: K-shot scoring (max over K=50), top-C (C=10K) and SemDeDup at tau=0.9 through a FAISS range search.
Then, on the same 5,000 candidates, it times the official script's dense dedup (``cdist`` C x C cosine
matrix + a Python loop over close pairs with list membership tests, Rocket:Data_Augmentation/data_aug.py,
re-implemented here only as a baseline) against ours and prints the ratio.

The synthetic pool has structure so that dedup has work to do: 20% of the rows are noisy copies
(cosine ~0.95) of other rows.

    python experiments/data_selection/bench_scale.py                 # 10K, 100K, 1M
    python experiments/data_selection/bench_scale.py --sizes 10000 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    """Current resident set size in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_pool(n: int, dim: int, dup_frac: float, seed: int) -> np.ndarray:
    """``n`` unit vectors (float32, generated in blocks: no float64 copy of the matrix); ``dup_frac`` are copies."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float32)
    block = 65536
    for s in range(0, n, block):
        rng.standard_normal(out=x[s : s + block], dtype=np.float32)
    n_dup = int(dup_frac * n)
    dst = rng.choice(n, n_dup, replace=False)
    src = rng.integers(0, n, n_dup)
    for s in range(0, n_dup, block):
        d, sidx = dst[s : s + block], src[s : s + block]
        x[d] = x[sidx] + 0.23 * rng.standard_normal((len(d), dim), dtype=np.float32)
    for s in range(0, n, block):
        x[s : s + block] /= np.linalg.norm(x[s : s + block], axis=1, keepdims=True)
    return x


def official_dense_dedup(emb: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The official dedup (dense C x C cosine distances, Python loop with ``list`` membership); kept indices."""
    from scipy.spatial.distance import cdist

    dists = cdist(emb, emb, "cosine")
    close = np.where(dists < threshold)
    to_remove: list[int] = []
    for i in range(len(close[0])):
        if close[0][i] != close[1][i] and close[1][i] not in to_remove:
            to_remove.append(close[1][i])
    return np.delete(np.arange(emb.shape[0]), to_remove)


def one(n: int, dim: int, budget: int, k: int, tau: float, compare_c: int, kind: str) -> dict:
    """Benchmark one pool size in this process."""
    from kexpert.selection.data.dedup import SemDeDup
    from kexpert.selection.data.faiss_index import IndexConfig
    from kexpert.selection.data.scoring import kshot_similarity, top_c

    base_rss = rss_mb()
    t = time.perf_counter()
    pool = synthetic_pool(n, dim, 0.2, seed=0)
    kshot = pool[np.random.default_rng(1).choice(n, k, replace=False)]  # K-shot drawn from the same space
    gen_s = time.perf_counter() - t
    matrix_mb = pool.nbytes / 2**20
    after_gen_rss = rss_mb()

    dedup = SemDeDup(tau=tau, index=IndexConfig(kind=kind))
    c0 = time.process_time()
    t0 = time.perf_counter()
    ks = kshot_similarity(pool, kshot, "max")
    t1 = time.perf_counter()
    cand = top_c(ks.scores, budget)
    t2 = time.perf_counter()
    res = dedup(pool[cand], ks.scores[cand])
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    out = {
        "n": n,
        "dim": dim,
        "K": k,
        "C": budget,
        "tau": tau,
        "index": kind,
        "score_s": round(t1 - t0, 3),
        "top_c_s": round(t2 - t1, 3),
        "dedup_s": round(t3 - t2, 3),
        "select_plus_dedup_s": round(t3 - t0, 3),
        "select_plus_dedup_cpu_s": round(cpu, 3),
        "kept": int(res.keep.sum()),
        "pairs": res.n_pairs,
        "matrix_mb": round(matrix_mb, 1),
        "process_base_rss_mb": round(base_rss, 1),
        "rss_after_generation_mb": round(after_gen_rss, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "generation_s": round(gen_s, 2),
    }
    out["peak_over_matrix"] = round(out["peak_rss_mb"] / matrix_mb, 2)
    if compare_c:
        c5 = cand[:compare_c]
        emb5, sc5 = pool[c5], ks.scores[c5]
        t, c = time.perf_counter(), time.process_time()
        ours = SemDeDup(tau=tau, index=IndexConfig(kind="flat"))(emb5, sc5)
        ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        kept_official = official_dense_dedup(emb5, 1.0 - tau)
        official_s, official_cpu = time.perf_counter() - t, time.process_time() - c
        out.update(
            compare_C=compare_c,
            ours_dedup_s=round(ours_s, 3),
            official_dense_dedup_s=round(official_s, 3),
            speedup_vs_official=round(official_s / ours_s, 1),
            ours_dedup_cpu_s=round(ours_cpu, 3),
            official_dense_dedup_cpu_s=round(official_cpu, 3),
            speedup_vs_official_cpu=round(official_cpu / ours_cpu, 1),
            ours_kept=int(ours.keep.sum()),
            official_kept=int(len(kept_official)),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw", "auto"])
    ap.add_argument("--compare-at", type=int, default=100_000, help="pool size at which to run the official baseline")
    ap.add_argument("--compare-c", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=HERE / "bench_results.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        compare = args.compare_c if args.one == args.compare_at else 0
        print(json.dumps(one(args.one, args.dim, min(args.budget, args.one), args.k, args.tau, compare, args.index)))
        return
    rows = []
    load0 = os.getloadavg()
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--dim",
            str(args.dim),
            "--budget",
            str(args.budget),
            "--k",
            str(args.k),
            "--tau",
            str(args.tau),
            "--index",
            args.index,
            "--compare-at",
            str(args.compare_at),
            "--compare-c",
            str(args.compare_c),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"n={n:>9,}  select+dedup {row['select_plus_dedup_s']:6.2f} s wall / "
            f"{row['select_plus_dedup_cpu_s']:.2f} s CPU (score {row['score_s']:.2f}, "
            f"top-C {row['top_c_s']:.2f}, dedup {row['dedup_s']:.2f})  kept {row['kept']:,}/{row['C']:,}  "
            f"peak RSS {row['peak_rss_mb']:,.0f} MiB = {row['peak_over_matrix']:.2f}x the {row['matrix_mb']:,.0f} MiB "
            "matrix",
            flush=True,
        )
        if "speedup_vs_official" in row:
            print(
                f"  C={row['compare_C']}: ours {row['ours_dedup_s']:.3f} s (kept {row['ours_kept']}), official dense "
                f"{row['official_dense_dedup_s']:.2f} s (kept {row['official_kept']}): "
                f"{row['speedup_vs_official']}x faster (CPU time {row['speedup_vs_official_cpu']}x)",
                flush=True,
            )
    meta = {"cpu_count": os.cpu_count(), "load_avg_at_start": load0, "load_avg_at_end": os.getloadavg(), "rows": rows}
    from kexpert.utils.io import write_json

    write_json(args.out, meta)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
