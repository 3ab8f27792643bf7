//! Criterion benchmarks of the learners: click-model training per epoch (10k rows, 16
//! inputs), single-row and 1k-row inference (plain Rust vs candle), and bandit updates per
//! second (LinUCB, LinTS; d = 12 context, 4 one-hot actions), and the latency of one bandit
//! decision from a published snapshot.
//!
//! Run: `cargo bench --bench learn` (add `-- --quick` for a short run). Data come from the
//! seeded simulator, so runs are comparable.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use trimtab::learn::bandit::{new_policy, one_hot, Params, PolicyKind};
use trimtab::learn::model::mlp::{fit, Architecture, ClickModel, TrainConfig};
use trimtab::learn::model::Dataset;
use trimtab::learn::sim::Environment;

const K: usize = 4;
const D: usize = 12;

fn data(rows: usize) -> Dataset {
    let env = Environment::new(K, D, 1);
    let mut logging = new_policy(PolicyKind::Uniform, D, K, &Params::default()).unwrap();
    let log = env.log(rows, logging.as_mut(), false, &mut StdRng::seed_from_u64(2));
    Dataset::from_rows(&log, Some(K)).unwrap()
}

fn training(c: &mut Criterion) {
    let train = data(10_000);
    let val = train.slice(0..0);
    let cfg = TrainConfig {
        max_epochs: 1,
        ..TrainConfig::default()
    };
    let mut g = c.benchmark_group("click_model_train");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(train.len() as u64));
    g.bench_function("epoch_10k_rows_16_inputs", |b| {
        b.iter(|| fit(black_box(&train), &val, &cfg, &mut |_| {}).unwrap())
    });
    g.finish();
}

fn inference(c: &mut Criterion) {
    let test = data(1_000);
    let arch = Architecture {
        input: test.dim(),
        hidden: vec![64, 32],
        dropout: 0.2,
    };
    let model = ClickModel::init(arch, &mut StdRng::seed_from_u64(3)).unwrap();
    let row = test.row(0).to_vec();
    let mut g = c.benchmark_group("click_model_predict");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_row_plain_rust", |b| {
        b.iter(|| model.predict(black_box(&row)))
    });
    // Baseline: the same row through candle (what predict would cost without the plain pass).
    g.bench_function("single_row_candle", |b| {
        b.iter(|| model.predict_batch(black_box(&row)).unwrap())
    });
    g.throughput(Throughput::Elements(test.len() as u64));
    g.bench_function("batch_1k_candle", |b| {
        b.iter(|| model.predict_batch(black_box(&test.x)).unwrap())
    });
    g.bench_function("batch_1k_plain_rust_loop", |b| {
        b.iter(|| {
            (0..test.len())
                .map(|i| model.predict(test.row(i)))
                .collect::<Vec<f32>>()
        })
    });
    g.finish();
}

fn bandit_updates(c: &mut Criterion) {
    let actions = one_hot(K);
    let mut rng = StdRng::seed_from_u64(4);
    let ctxs: Vec<Vec<f32>> = (0..1024)
        .map(|_| (0..D).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut g = c.benchmark_group("bandit_update");
    g.throughput(Throughput::Elements(1));
    for kind in [PolicyKind::LinUcb, PolicyKind::LinTs] {
        g.bench_function(format!("{kind}_d12_k4"), |b| {
            let mut p = new_policy(kind, D, K, &Params::default()).unwrap();
            let mut i = 0usize;
            b.iter_batched_ref(
                || {
                    i = (i + 1) % ctxs.len();
                    i
                },
                |&mut i| {
                    p.update(
                        black_box(&ctxs[i]),
                        &actions[i % K],
                        (i % 3 == 0) as u8 as f64,
                    )
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One bandit decision as a shard makes it: a published (restored) snapshot of a policy that has
/// absorbed 2 000 rewards chooses among 4 candidates for a 12-feature context. Baseline in the
/// same run: the uniform policy's choice (the cost of the call itself).
fn bandit_choice(c: &mut Criterion) {
    let actions = one_hot(K);
    let mut rng = StdRng::seed_from_u64(5);
    let ctxs: Vec<Vec<f32>> = (0..1024)
        .map(|_| (0..D).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut g = c.benchmark_group("bandit_choose");
    g.throughput(Throughput::Elements(1));
    for kind in [
        PolicyKind::Uniform,
        PolicyKind::EpsilonGreedy,
        PolicyKind::LinUcb,
        PolicyKind::LinTs,
    ] {
        let mut learner = new_policy(kind, D, K, &Params::default()).unwrap();
        for i in 0..2000 {
            let ctx = &ctxs[i % ctxs.len()];
            learner.update(ctx, &actions[i % K], f64::from(u8::from(ctx[0] > 0.0)));
        }
        let published = learner.snapshot().restore().unwrap();
        let _ = published.probabilities(&ctxs[0], &actions); // LinTS draws once per snapshot
        let mut i = 0usize;
        g.bench_function(format!("{kind}_d12_k4"), |b| {
            b.iter(|| {
                i = (i + 1) % ctxs.len();
                published.choose(black_box(&ctxs[i]), &actions, 0.37)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, training, inference, bandit_updates, bandit_choice);
criterion_main!(benches);
