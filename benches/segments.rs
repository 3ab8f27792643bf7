//! Criterion benchmarks of the segments engine on 100k synthetic users × 16 features, plus a
//! peak-memory mode, and the data file that `benches/sklearn_segments.py` reads, so both sides
//! cluster exactly the same numbers.
//!
//! Time (criterion):       `cargo bench --bench segments`
//! Peak memory, one algo:  `SEGMENTS_PEAK=kmeans cargo bench --bench segments` (also `gmm`,
//!                         `dbscan`): loads the CSV like scikit-learn's side does, runs once and
//!                         prints wall time and peak RSS (`getrusage`), before and after.
//! Data: `target/segments-bench/users_100k_scaled.csv` (robust-scaled features, header; written
//! on every run, deterministic: seed 42, 5 % noise users). Override the directory with
//! `SEGMENTS_BENCH_DIR`. Parameters match the Python script: k = 3, n_init = 3 (k-means and GMM,
//! each GMM restart initialised by k-means), GMM diagonal with ≤ 100 iterations, tol 1e-3,
//! reg 1e-3; DBSCAN eps = 0.5 and min_points = 10.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use trimtab::segments::dbscan::{self, DbscanParams};
use trimtab::segments::gmm::{self, GmmParams};
use trimtab::segments::kmeans::{self, KMeansParams};
use trimtab::segments::{io, synth, Matrix, RobustScaler};

const N: usize = 100_000;
const SEED: u64 = 42;
const EPS: f32 = 0.5;
const MIN_POINTS: usize = 10;

fn kp() -> KMeansParams {
    KMeansParams {
        k: 3,
        n_init: 3,
        ..Default::default()
    }
}

fn gp() -> GmmParams {
    GmmParams {
        k: 3,
        ..Default::default()
    }
}

fn dp() -> DbscanParams {
    DbscanParams {
        eps: EPS,
        min_points: MIN_POINTS,
    }
}

fn data_path() -> PathBuf {
    let dir =
        std::env::var("SEGMENTS_BENCH_DIR").unwrap_or_else(|_| "target/segments-bench".into());
    PathBuf::from(dir).join("users_100k_scaled.csv")
}

/// Generates the users, scales them and writes the CSV the Python side reads.
fn scaled_data() -> Matrix {
    let ds = synth::dataset(N, 0.05, SEED);
    let x = RobustScaler::fit(&ds.raw).transform(&ds.raw);
    let path = data_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the bench data directory");
    }
    std::fs::write(&path, io::to_csv(&x, &synth::Dataset::names())).expect("write bench CSV");
    x
}

fn bench(c: &mut Criterion) {
    let ds = synth::dataset(N, 0.05, SEED);
    let x = scaled_data();
    let mut g = c.benchmark_group("segments_100k_x16");
    g.sample_size(10);
    g.bench_function("generate_users+features", |b| {
        b.iter(|| black_box(synth::dataset(N, 0.05, SEED)))
    });
    g.bench_function("robust_scale", |b| {
        b.iter(|| black_box(RobustScaler::fit(&ds.raw).transform(&ds.raw)))
    });
    g.bench_function("kmeans_k3_ninit3", |b| {
        b.iter(|| black_box(kmeans::fit(&x, &kp()).expect("valid params")))
    });
    g.bench_function("gmm_diag_k3", |b| {
        b.iter(|| black_box(gmm::fit(&x, &gp()).expect("valid params")))
    });
    g.bench_function("gmm_diag_bic_k2..6", |b| {
        b.iter(|| black_box(gmm::fit_bic(&x, 2..=6, &gp()).expect("valid params")))
    });
    g.bench_function("dbscan_eps0.5_min10", |b| {
        b.iter(|| black_box(dbscan::fit(&x, &dp()).expect("valid params")))
    });
    g.finish();
}

criterion_group!(benches, bench);

fn max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

/// Runs one algorithm once on the CSV (as the Python side does) and prints time and memory.
fn peak(algo: &str) {
    let path = data_path();
    if !path.exists() {
        scaled_data();
    }
    let before_load = max_rss_kib();
    let (x, _) = io::read_features(&path).expect("read bench CSV");
    let before = max_rss_kib();
    let t = Instant::now();
    let (k, noise) = match algo {
        "kmeans" => (
            kmeans::fit(&x, &kp()).expect("valid params").0.centroids.n,
            0,
        ),
        "gmm" => (gmm::fit(&x, &gp()).expect("valid params").0.k(), 0),
        "dbscan" => {
            let (m, l) = dbscan::fit(&x, &dp()).expect("valid params");
            (m.n_clusters, l.iter().filter(|&&v| v < 0).count())
        }
        other => panic!("SEGMENTS_PEAK must be kmeans, gmm or dbscan, not {other}"),
    };
    let secs = t.elapsed().as_secs_f64();
    let after = max_rss_kib();
    println!(
        "rust {algo}: n={} d={} time={secs:.3}s clusters={k} noise={noise} \
         peak_rss_MiB before_load={:.1} after_load={:.1} after_fit={:.1} fit_delta={:.1}",
        x.n,
        x.d,
        before_load as f64 / 1024.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0
    );
}

fn main() {
    if let Ok(algo) = std::env::var("SEGMENTS_PEAK") {
        peak(&algo);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
