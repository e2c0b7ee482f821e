"""Benchmark: the labelfree metrics suite against a straightforward scikit-learn pipeline.

For each N (evaluation samples) and k (clusters = classes) it builds SSL-like synthetic
embeddings (d=512), then times, in the same process:

* ours: ``labelfree.metrics.compute_metrics`` with ``conf/metrics/paper.yaml`` (k-means with 5
  batched initialisations, silhouette S1, AMI(C1;C2), entropy, AMI(C1;C_GT), linear probe), and
  the ``full`` config (everything);
* sklearn: ``KMeans(n_init=1)`` once per initialisation, exact ``silhouette_score``,
  ``adjusted_mutual_info_score`` for every pair and against the labels,
  ``LogisticRegression(max_iter=1000)`` on the raw features.

It prints per-metric times, the speedup and the largest absolute difference of every shared
metric. Differences are measured on the same partitions (both silhouettes and both AMIs are fed
sklearn's k-means partitions; the probes see the same splits); the k-means quality is compared
separately (mean inertia of our runs vs sklearn's runs).

On a machine shared with other busy processes, OpenMP's default busy-waiting slows both pipelines
erratically (torch's small parallel ops most); ``--threads 1`` gives both one thread and stable,
comparable timings. ``OMP_WAIT_POLICY=PASSIVE`` helps torch under load but slows scikit-learn's
KMeans several-fold, so it is not a fair setting for the comparison.

The sklearn pipeline is O(N^2) (exact silhouette) and slow (LogisticRegression) at N=50,000 on a
small machine, so it is skipped above ``--ref-max-n`` (the output says so); our suite is always
timed.

    python scripts/bench_metrics.py                      # N in {2500, 10000, 50000}, k in {10, 100}
    python scripts/bench_metrics.py --quick              # a 2500 x 512, k=10 smoke run
    python scripts/bench_metrics.py --device cuda --sizes 50000 --ref-max-n 0
    python scripts/bench_metrics.py --silhouette-error --sizes 10000   # sampled-S1 error study
    python scripts/bench_metrics.py --spectral           # spectral metrics: separate vs shared

``--spectral`` times RankMe, alpha-ReQ and NESum each on the embeddings (three D x D float64
products and eigendecompositions) against one ``spectrum(x)`` shared by all three, next to a
plain ``np.cov`` (float64 covariance, no eigendecomposition) and to LiDAR (100 images x 10
views) and l2_std; median of ``--repeats`` runs, N = 10,000 unless ``--sizes`` says otherwise.
It then times the same three inside ``compute_metrics``, with the registry's shared
``spectrum`` provider and without it (the three specs' ``spectrum`` need removed for the run,
as the suite was before the provider), alone and as part of the full suite (labels and a
labelled train split of N points, no views).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_mutual_info_score, silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from labelfree.metrics import (
    compute_metrics,
    kmeans,
    kmeans_agreement,
    kmeans_gt_ami,
    registry,
    silhouette,
    silhouette_samples,
)
from labelfree.metrics.lidar import lidar
from labelfree.metrics.spectral import alpha_req, l2_std, nesum, rankme, spectrum

CONF = Path(__file__).resolve().parents[1] / "src" / "labelfree" / "conf" / "metrics"


def ssl_like(n: int, n_train: int, d: int, k: int, seed: int = 0):
    """Embeddings that look like SSL features: class blobs in a 32-dim subspace plus noise.

    Class means are Gaussian in a random 32-dim subspace of R^d, each class has its own spread,
    everything gets isotropic noise, a common offset, and a ReLU (backbone features are
    post-ReLU averages). Returns float32 ``(x, y, train_x, train_y)``.
    """
    rng = np.random.default_rng(seed)
    r = 32
    basis = np.linalg.qr(rng.normal(size=(d, r)))[0].T  # (r, d) orthonormal rows
    means = rng.normal(scale=1.0, size=(k, r))
    spread = rng.uniform(1.0, 1.6, size=k)  # overlapping classes: S1 ~0.05-0.1, probe 0.85-0.98

    def draw(m):
        y = rng.integers(0, k, m)
        z = means[y] + spread[y, None] * rng.normal(size=(m, r))
        x = z @ basis * 4.0 + 0.15 * rng.normal(size=(m, d)) + 0.5
        return np.maximum(x, 0.0).astype(np.float32), y.astype(np.int64)

    x, y = draw(n)
    tx, ty = draw(n_train)
    return x, y, tx, ty


def load_config(name: str):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if "defaults" in cfg:  # full.yaml inherits paper.yaml (Hydra defaults list)
        base = OmegaConf.load(CONF / "paper.yaml")
        cfg.pop("defaults")
        cfg = OmegaConf.merge(base, cfg)
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(x, y, tx, ty, cfg, device, seed):
    tensors = [torch.from_numpy(a).to(device) for a in (x, y, tx, ty)]
    sync(device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    out = compute_metrics(
        tensors[0], config=cfg, labels=tensors[1], train_embeddings=tensors[2],
        train_labels=tensors[3], seed=seed, timings=timings,
    )  # fmt: skip
    sync(device)
    timings["total"] = time.perf_counter() - start
    return out, timings


def run_sklearn(x, y, tx, ty, k, n_runs, seed, l2):
    t: dict[str, float] = {}
    start = time.perf_counter()
    fits = [KMeans(k, n_init=1, random_state=seed + r).fit(x) for r in range(n_runs)]
    t["kmeans"] = time.perf_counter() - start
    parts = np.stack([f.labels_ for f in fits])
    start = time.perf_counter()
    sil = silhouette_score(x, parts[0])
    t["silhouette"] = time.perf_counter() - start
    start = time.perf_counter()
    pairs = itertools.combinations(range(n_runs), 2)
    agree = float(np.mean([adjusted_mutual_info_score(parts[a], parts[b]) for a, b in pairs]))
    t["kmeans_agreement"] = time.perf_counter() - start
    start = time.perf_counter()
    gt = adjusted_mutual_info_score(y, parts[0])
    t["kmeans_gt_ami"] = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(max_iter=1000).fit(tx, ty).score(x, y)
    t["linear_probe_acc"] = time.perf_counter() - start
    t["total"] = sum(t.values())
    # untimed: sklearn on our probe's features and objective (standardised, C = 1 / (l2 n)),
    # solved to a tight tolerance (the default tol=1e-4 stops far from the optimum when classes
    # are nearly separable) so that both reach the same minimiser
    scaler = StandardScaler().fit(tx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        same = LogisticRegression(C=1 / (l2 * len(tx)), max_iter=1000, tol=1e-8)
        same = same.fit(scaler.transform(tx), ty).score(scaler.transform(x), y)
    values = {
        "lf/silhouette": sil, "lf/kmeans_agreement": agree, "sup/kmeans_gt_ami": gt,
        "sup/linear_probe_acc": probe, "probe_same_features": same,
        "inertia_best": float(min(f.inertia_ for f in fits)),
        "inertia_mean": float(np.mean([f.inertia_ for f in fits])),
    }  # fmt: skip
    return values, t, parts


def same_partition_diffs(x, y, parts, ref, cfg, device, seed):
    """Our implementations on sklearn's partitions vs sklearn's values (untimed)."""
    xt = torch.from_numpy(x).to(device)
    pt = torch.from_numpy(parts).to(device)
    ours_sil = silhouette(xt, pt[0], seed=seed, **cfg.silhouette)
    return {
        "lf/silhouette": abs(ours_sil - ref["lf/silhouette"]),
        "lf/kmeans_agreement": abs(kmeans_agreement(pt) - ref["lf/kmeans_agreement"]),
        "sup/kmeans_gt_ami": abs(
            kmeans_gt_ami(pt[0], torch.from_numpy(y).to(device)) - ref["sup/kmeans_gt_ami"]
        ),
    }


def our_inertia(x, cfg, k, device, seed):
    """Best and mean inertia of our k-means runs (the suite's settings)."""
    kw = {key: v for key, v in cfg.kmeans.items() if key != "k"}
    res = kmeans(torch.from_numpy(x).to(device), k=k, seed=seed, **kw)
    return float(res.inertia.min()), float(res.inertia.mean())


def silhouette_error_study(args, device):
    """Sampled vs exact silhouette over seeds, on k-means-like partitions (the true labels)."""
    print("\n## Sampled silhouette: error against the exact value")
    print("| N | k | anchors m | exact S1 | mean abs err | max abs err | predicted SE "
          "| time exact (s) | time sampled (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n, k in itertools.product(args.sizes, args.ks):
        x, y, _, _ = ssl_like(n, 10, args.dim, k, seed=args.seed)
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        sync(device)
        start = time.perf_counter()
        values = silhouette_samples(xt, yt)
        exact = float(values.mean())
        sync(device)
        t_exact = time.perf_counter() - start
        sd = float(values.std())
        for m in args.anchors:
            if m >= n:
                continue
            errs, times = [], []
            for s in range(args.error_seeds):
                start = time.perf_counter()
                errs.append(silhouette(xt, yt, sample_size=m, seed=s) - exact)
                times.append(time.perf_counter() - start)
            se = sd / math.sqrt(m) * math.sqrt(1 - m / n)
            row = (n, k, m, exact, np.mean(np.abs(errs)), np.max(np.abs(errs)), se, t_exact,
                   np.mean(times))  # fmt: skip
            rows.append(row)
            print(
                "| {} | {} | {} | {:.4f} | {:.4f} | {:.4f} | {:.4f} | {:.2f} | {:.2f} |".format(
                    *row
                )
            )
    return rows


def _median_time(fn, device, repeats):
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run); its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def _spectral_case(x, device, repeats, seed):
    """Times (and values) of the spectral metrics on one ``(N, d)`` float32 array."""
    xt = torch.from_numpy(x).to(device)
    cpu = torch.device("cpu")
    row = {"np_cov": _median_time(lambda: np.cov(x, rowvar=False), cpu, repeats)[0]}
    separate = {}
    for fn in (rankme, alpha_req, nesum):
        row[fn.__name__], separate[fn.__name__] = _median_time(lambda f=fn: f(xt), device, repeats)
    row["separate"] = row["rankme"] + row["alpha_req"] + row["nesum"]
    row["spectrum"] = _median_time(lambda: spectrum(xt), device, repeats)[0]

    def shared():
        s = spectrum(xt)
        return {fn.__name__: fn(xt, spectrum=s) for fn in (rankme, alpha_req, nesum)}

    row["shared"], values = _median_time(shared, device, repeats)
    row["max_rel_diff"] = max(abs(values[k] / separate[k] - 1) for k in separate)
    # LiDAR at stable-pretraining's size: 100 images x 10 noisy views
    noise = 0.1 * np.random.default_rng(seed).normal(size=(100, 10, x.shape[1]))
    views = torch.from_numpy((x[:100, None, :] + noise).astype(np.float32)).to(device)
    row["lidar_100x10"] = _median_time(lambda: lidar(views), device, repeats)[0]
    row["l2_std"] = _median_time(lambda: l2_std(xt), device, repeats)[0]
    return row


SPECTRAL = ("rankme", "alpha_req", "nesum")


@contextlib.contextmanager
def unshared_spectrum():
    """The suite without the shared ``spectrum`` provider: each spectral metric on its own."""
    saved = {name: registry.SPECS[name] for name in SPECTRAL}
    try:
        for name, spec in saved.items():
            registry.SPECS[name] = dataclasses.replace(spec, needs=("embeddings",))
        yield
    finally:
        registry.SPECS.update(saved)


def _suite_case(x, y, tx, ty, device, repeats, seed):
    """The spectral metrics inside compute_metrics, shared vs unshared; alone and in full."""
    inputs = [torch.from_numpy(a).to(device) for a in (x, y, tx, ty)]
    full = load_config("full")
    full.compute = [m for m in full.compute if m != "lidar"]  # no views here
    configs = {"three": {"name": "spectral", "compute": list(SPECTRAL)}, "full": full}
    row, values = {}, {}
    for sharing in ("shared", "unshared"):
        for name, cfg in configs.items():
            timings: dict[str, float] = {}

            def suite(cfg=cfg, timings=timings):
                timings.clear()
                return compute_metrics(
                    inputs[0], config=cfg, labels=inputs[1], train_embeddings=inputs[2],
                    train_labels=inputs[3], seed=seed, timings=timings,
                )  # fmt: skip

            with unshared_spectrum() if sharing == "unshared" else contextlib.nullcontext():
                row[f"{sharing}_{name}"], values[(sharing, name)] = _median_time(
                    suite, device, repeats
                )
            row[f"{sharing}_{name}_spectral_steps"] = sum(
                timings.get(k, 0.0) for k in ("spectrum", *SPECTRAL)
            )
    row["suite_max_rel_diff"] = max(
        abs(values[("shared", n)][k] / values[("unshared", n)][k] - 1)
        for n in configs
        for k in values[("shared", n)]
        if k.removeprefix("lf/") in SPECTRAL
    )
    return row


def spectral_study(args, device):
    """RankMe, alpha-ReQ and NESum computed separately vs from one shared spectrum."""
    print(f"\n## Spectral metrics: separate vs one shared spectrum (median of {args.repeats} "
          "runs, seconds)")  # fmt: skip
    print("| N | d | np.cov | rankme | alpha_req | nesum | separate total | spectrum() "
          "| shared total (spectrum + 3 metrics) | speedup | max rel diff | lidar (100 x 10) "
          "| l2_std |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in args.sizes:
        x, _, _, _ = ssl_like(n, 10, args.dim, 10, seed=args.seed)
        row = {"n": n, "d": args.dim, **_spectral_case(x, device, args.repeats, args.seed)}
        rows.append(row)
        print(
            "| {n} | {d} | {np_cov:.3f} | {rankme:.3f} | {alpha_req:.3f} | {nesum:.3f} "
            "| {separate:.3f} | {spectrum:.3f} | {shared:.3f} | {speedup:.1f}x "
            "| {max_rel_diff:.1e} | {lidar_100x10:.3f} | {l2_std:.3f} |".format(
                speedup=row["separate"] / row["shared"], **row
            )
        )
    print(f"\n## In the suite: compute_metrics with vs without the shared spectrum provider "
          f"(median of {args.repeats} runs, seconds; full = metrics=full but LiDAR, with labels "
          "and an N-point labelled train split)")  # fmt: skip
    print("| N | d | 3 spectral, shared | 3 spectral, unshared | speedup | full suite, shared "
          "| full suite, unshared | its spectral steps, shared | unshared | saved | "
          "max rel diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        x, y, tx, ty = ssl_like(row["n"], row["n"], args.dim, 10, seed=args.seed)
        row.update(_suite_case(x, y, tx, ty, device, args.repeats, args.seed))
        print(
            "| {n} | {d} | {shared_three:.3f} | {unshared_three:.3f} | {speedup:.1f}x "
            "| {shared_full:.3f} | {unshared_full:.3f} | {shared_full_spectral_steps:.3f} "
            "| {unshared_full_spectral_steps:.3f} | {saved:.3f} | {suite_max_rel_diff:.1e} "
            "|".format(
                speedup=row["unshared_three"] / row["shared_three"],
                saved=row["unshared_full"] - row["shared_full"],
                **row,
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="N values (default: 2500 10000 50000; 10000 with --spectral)",
    )
    p.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="labelled train split size (default: N, the evaluation size)",
    )
    p.add_argument("--device", default="cpu", help="device of our suite: cpu | cuda")
    p.add_argument(
        "--ref-max-n",
        type=int,
        default=10000,
        help="skip the sklearn reference above this N (0: never run it)",
    )
    p.add_argument("--suites", nargs="+", default=["paper", "full"], choices=["paper", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for both pipelines (default: torch's default, all cores)",
    )
    p.add_argument("--quick", action="store_true", help="one small case: N=2500, k=10")
    p.add_argument(
        "--silhouette-error",
        action="store_true",
        help="measure the sampled silhouette's error instead",
    )
    p.add_argument(
        "--spectral",
        action="store_true",
        help="time RankMe/alpha-ReQ/NESum separately vs from one shared spectrum instead",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per step (--spectral)")
    p.add_argument("--anchors", type=int, nargs="+", default=[1000, 2500, 10000])
    p.add_argument("--error-seeds", type=int, default=10)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.sizes is None:
        args.sizes = [10000] if args.spectral else [2500, 10000, 50000]
    if args.quick:
        args.sizes, args.ks = [2500], [10]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    print(
        f"# bench_metrics on {platform.node()}: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"# command: {' '.join(sys.argv)} (OMP_WAIT_POLICY={omp})")
    print(f"# load average at start: {os.getloadavg()[0]:.2f}")
    if args.spectral:
        rows = spectral_study(args, device)
        print(f"# load average at end: {os.getloadavg()[0]:.2f}")
        if args.json:
            args.json.write_text(json.dumps({"spectral": rows}, indent=1, default=float))
        return
    if args.silhouette_error:
        rows = silhouette_error_study(args, device)
        if args.json:
            args.json.write_text(json.dumps({"silhouette_error": rows}, indent=1, default=float))
        return

    # warm-up (allocator, BLAS and CUDA initialisation are not what we measure)
    wx, wy, wtx, wty = ssl_like(500, 500, args.dim, 5, seed=99)
    for name in args.suites:
        run_ours(wx, wy, wtx, wty, load_config(name), device, 0)

    results, summary = [], []
    for n, k in itertools.product(args.sizes, args.ks):
        n_train = args.n_train or n
        x, y, tx, ty = ssl_like(n, n_train, args.dim, k, seed=args.seed)
        print(f"\n## N={n} (train {n_train}), d={args.dim}, k={k}")
        entry = {"n": n, "n_train": n_train, "k": k, "device": str(device)}
        ours = {}
        for name in args.suites:
            cfg = load_config(name)
            cfg.kmeans.k = k
            values, timings = run_ours(x, y, tx, ty, cfg, device, args.seed)
            ours[name] = (values, timings)
            entry[f"ours_{name}"] = {"values": values, "timings": timings}
        paper_cfg = load_config("paper")
        paper_cfg.kmeans.k = k
        run_ref = 0 < n <= args.ref_max_n
        if run_ref:
            ref, ref_t, parts = run_sklearn(
                x, y, tx, ty, k, paper_cfg.kmeans.n_runs, args.seed, paper_cfg.linear_probe_acc.l2
            )
            diffs = same_partition_diffs(x, y, parts, ref, paper_cfg, device, args.seed)
            ours_probe = ours.get("paper", ours.get("full"))[0]["sup/linear_probe_acc"]
            diffs["sup/linear_probe_acc"] = abs(ours_probe - ref["sup/linear_probe_acc"])
            diffs["probe_same_features"] = abs(ours_probe - ref["probe_same_features"])
            best, mean = our_inertia(x, paper_cfg, k, device, args.seed)
            inertia_rel = (best / ref["inertia_best"] - 1, mean / ref["inertia_mean"] - 1)
            entry["sklearn"] = {"values": ref, "timings": ref_t, "diffs": diffs,
                                "inertia_rel_diff": inertia_rel}  # fmt: skip
        else:
            print(
                f"sklearn reference skipped at N={n} (> --ref-max-n {args.ref_max_n}: exact "
                "silhouette is O(N^2) and LogisticRegression takes minutes on a small machine)"
            )

        keys = ["kmeans", "silhouette", "kmeans_agreement", "entropy", "kmeans_gt_ami",
                "linear_probe_acc", "rankme", "alpha_req", "nesum", "uniformity", "knn_acc",
                "fewshot_probe_acc", "total"]  # fmt: skip
        head = "| step | " + " | ".join(f"ours {s} (s)" for s in args.suites)
        head += " | sklearn (s) | speedup (paper) | abs(ours - sklearn) (same partition) |"
        print(head)
        print("|" + "---|" * (len(args.suites) + 4))
        for key in keys:
            cells = [f"{ours[s][1][key]:.3f}" if key in ours[s][1] else "" for s in args.suites]
            ref_cell = speed = diff = ""
            if run_ref and key in ref_t:
                ref_cell = f"{ref_t[key]:.3f}"
                if "paper" in ours and key in ours["paper"][1]:
                    speed = f"{ref_t[key] / max(ours['paper'][1][key], 1e-9):.1f}x"
                mkey = {"silhouette": "lf/silhouette", "kmeans_agreement": "lf/kmeans_agreement",
                        "kmeans_gt_ami": "sup/kmeans_gt_ami",
                        "linear_probe_acc": "sup/linear_probe_acc"}.get(key)  # fmt: skip
                if mkey:
                    diff = f"{diffs[mkey]:.2e}"
                if key == "kmeans":
                    diff = f"inertia best {inertia_rel[0]:+.2%}, mean {inertia_rel[1]:+.2%}"
            print(f"| {key} | " + " | ".join(cells) + f" | {ref_cell} | {speed} | {diff} |")
        print(
            "values (ours, "
            + args.suites[0]
            + "): "
            + ", ".join(f"{kk}={v:.4f}" for kk, v in ours[args.suites[0]][0].items())
        )
        if run_ref:
            print("values (sklearn): " + ", ".join(f"{kk}={v:.4f}" for kk, v in ref.items()))
        row = {"n": n, "k": k}
        for s in args.suites:
            row[f"ours_{s}"] = ours[s][1]["total"]
        if run_ref:
            row["sklearn"] = ref_t["total"]
            row["speedup"] = ref_t["total"] / ours["paper"][1]["total"] if "paper" in ours else None
            row["max_diff"] = max(v for kk, v in diffs.items() if kk.startswith("lf/") or
                                  kk == "sup/kmeans_gt_ami")  # fmt: skip
            row["probe_diff"] = diffs["sup/linear_probe_acc"]
            row["probe_same"] = diffs["probe_same_features"]
            row["inertia_rel"] = inertia_rel
        summary.append(row)
        results.append(entry)

    print(f"\n## Summary ({device}; times in seconds; diffs on the same partitions)")
    cols = [f"ours {s}" for s in args.suites]
    print(
        "| N | k | " + " | ".join(cols) + " | sklearn | speedup | max abs diff S1/AMI "
        "| probe abs diff raw C=1 | probe abs diff same features "
        "| k-means inertia vs sklearn (best, mean of runs) |"
    )
    print("|" + "---|" * (len(cols) + 8))
    for row in summary:
        cells = [f"{row[f'ours_{s}']:.2f}" for s in args.suites]
        if "sklearn" in row:
            tail = (f"{row['sklearn']:.2f} | {row['speedup']:.1f}x | {row['max_diff']:.1e} | "
                    f"{row['probe_diff']:.4f} | {row['probe_same']:.4f} | "
                    f"{row['inertia_rel'][0]:+.2%}, "
                    f"{row['inertia_rel'][1]:+.2%}")  # fmt: skip
        else:
            tail = "skipped | | | | |"
        print(f"| {row['n']} | {row['k']} | " + " | ".join(cells) + f" | {tail} |")
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
