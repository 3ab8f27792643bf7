#!/usr/bin/env python3
"""scikit-learn baseline for benches/segments.rs: the same 100k x 16 robust-scaled users.

The Rust bench writes the data: run `cargo bench --bench segments` (or any SEGMENTS_PEAK run)
first; this script reads target/segments-bench/users_100k_scaled.csv (or argv[1]).

Usage: python3 benches/sklearn_segments.py [CSV] [kmeans|gmm|dbscan|all]
Each algorithm runs in a fresh process (so peak RSS is its own) with the same parameters as
the Rust side: KMeans k=3 n_init=3 k-means++; GaussianMixture k=3 diag tol=1e-3 max_iter=100
reg_covar=1e-3 n_init=3, each restart initialised by a k-means run (as ours); DBSCAN eps=0.5 min_samples=10 (kd_tree, n_jobs=-1).
Prints wall time and peak RSS (resource.getrusage ru_maxrss) before and after the fit.
"""
import os
import resource
import subprocess
import sys
import time

import numpy as np


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(path, algo):
    from sklearn.cluster import DBSCAN, KMeans
    from sklearn.mixture import GaussianMixture

    before_load = rss_mib()
    x = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    before = rss_mib()
    t = time.perf_counter()
    noise = 0
    if algo == "kmeans":
        m = KMeans(n_clusters=3, n_init=3, init="k-means++", random_state=42).fit(x)
        k = m.n_clusters
    elif algo == "gmm":
        m = GaussianMixture(n_components=3, covariance_type="diag", tol=1e-3, max_iter=100,
                            reg_covar=1e-3, init_params="kmeans", n_init=3,
                            random_state=42).fit(x)
        k = m.n_components
    elif algo == "dbscan":
        m = DBSCAN(eps=0.5, min_samples=10, algorithm="kd_tree", n_jobs=-1).fit(x)
        k = int(m.labels_.max()) + 1
        noise = int((m.labels_ < 0).sum())
    else:
        raise SystemExit(f"unknown algorithm {algo}")
    secs = time.perf_counter() - t
    after = rss_mib()
    print(f"sklearn {algo}: n={x.shape[0]} d={x.shape[1]} time={secs:.3f}s clusters={k} "
          f"noise={noise} peak_rss_MiB before_load={before_load:.1f} after_load={before:.1f} "
          f"after_fit={after:.1f} fit_delta={after - before:.1f}", flush=True)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "target/segments-bench/users_100k_scaled.csv"
    which = sys.argv[2] if len(sys.argv) > 2 else "all"
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run `cargo bench --bench segments` first")
    if which != "all":
        run_one(path, which)
        return
    import sklearn
    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}", flush=True)
    for algo in ("kmeans", "gmm", "dbscan"):
        subprocess.run([sys.executable, __file__, path, algo], check=True)


if __name__ == "__main__":
    main()
