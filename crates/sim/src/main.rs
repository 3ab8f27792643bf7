//! `trimtab-sim`: the command line of the simulator.
//!
//! Online (default): drives the server at `--url` with `--users` simulated users and prints a
//! [`Summary`](trimtab_sim::online::Summary) (`--json`: one JSON object). Offline (`--offline`):
//! writes `--rows` logged decisions as the JSONL log of `trimtab ope` to `--out`, and the
//! ground truth per row to `--truth`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use trimtab_learn::ope::write_log;
use trimtab_sim::audience::{expected_rates, GroundTruth, Mix};
use trimtab_sim::offline::{self, Logging, OfflineConfig};
use trimtab_sim::online::{self, OnlineConfig};

/// Arguments of `trimtab-sim`.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "trimtab-sim",
    version,
    about = "Drive a running trimtab server with a seeded synthetic audience over real WebSockets \
             (or, with --offline, write logged bandit feedback with known ground truth)"
)]
pub struct Args {
    /// Base URL of a running `trimtab serve` (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Simulated users (one visit and one decision each).
    #[arg(long, default_value_t = 500)]
    pub users: usize,
    /// Random seed: users, scripts and outcomes are reproducible from it.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Users simulated at the same time (one thread and one WebSocket each).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The slot to decide.
    #[arg(long, default_value = "cta")]
    pub slot: String,
    /// The slot's candidate variants; the ground truth knows control (or default), urgent,
    /// social and detailed; other names are neutral.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "control,urgent,social,detailed"
    )]
    pub candidates: Vec<String>,
    /// Shares of the user types.
    #[arg(long, default_value = "quick=0.4,deep=0.3,selective=0.3")]
    pub mix: Mix,
    /// Time compression: behaviour runs this many times faster than real time (0 = no waiting).
    #[arg(long, default_value_t = 50.0)]
    pub speed: f64,
    /// Seconds to wait for the server at each step (acks, answers).
    #[arg(long, default_value_t = 15)]
    pub timeout_s: u64,
    /// Online: also write every decision record as JSONL to this file.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Generate logged bandit feedback without a server.
    #[arg(long)]
    pub offline: bool,
    /// Offline: number of rows (users).
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    /// Offline: the JSONL log to write (the format `trimtab ope` reads).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Offline: also write the ground truth of each row as JSONL.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Offline: also write the audience's events (the SDK's wire shape, with `user`) as JSONL,
    /// for `trimtab rules backtest --events FILE`.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Offline: logging probabilities per candidate (normalised; default uniform).
    #[arg(long, value_delimiter = ',')]
    pub logging_weights: Option<Vec<f64>>,
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(path).with_context(|| {
        format!("cannot create {}", path.display())
    })?))
}

fn check_candidates(c: &[String]) -> anyhow::Result<()> {
    if c.is_empty() || c.iter().any(|x| x.trim().is_empty()) {
        bail!("--candidates needs one or more non-empty names");
    }
    if c.len() > 32 {
        bail!("at most 32 candidates (the server's limit)");
    }
    Ok(())
}

fn run_offline(a: &Args) -> anyhow::Result<()> {
    let Some(out) = &a.out else {
        bail!("--offline needs --out FILE for the log");
    };
    check_candidates(&a.candidates)?;
    let logging = match &a.logging_weights {
        None => Logging::Uniform,
        Some(w) => {
            if w.len() != a.candidates.len() {
                bail!(
                    "--logging-weights has {} entries for {} candidates",
                    w.len(),
                    a.candidates.len()
                );
            }
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                bail!("--logging-weights must be ≥ 0 with a positive sum");
            }
            Logging::Weights(w.clone())
        }
    };
    let cfg = OfflineConfig {
        rows: a.rows,
        seed: a.seed,
        mix: a.mix,
        candidates: a.candidates.clone(),
        logging,
    };
    let log = offline::generate(&cfg);
    let mut w = create(out)?;
    write_log(&mut w, &log.rows).with_context(|| format!("writing {}", out.display()))?;
    w.flush()?;
    if let Some(p) = &a.events {
        let mut w = create(p)?;
        let n = offline::write_events(&cfg, &mut w)
            .with_context(|| format!("writing {}", p.display()))?;
        w.flush()?;
        eprintln!(
            "trimtab-sim: {n} events of {} users in {}",
            cfg.rows,
            p.display()
        );
    }
    if let Some(t) = &a.truth {
        let mut w = create(t)?;
        log.write_truth(&mut w)
            .with_context(|| format!("writing {}", t.display()))?;
        w.flush()?;
    }
    let report = json!({
        "rows": log.rows.len(),
        "out": out.display().to_string(),
        "truth": a.truth.as_ref().map(|t| t.display().to_string()),
        "candidates": log.candidates,
        "mean_reward": log.mean_reward(),
        "logged_value": log.logged_value(),
        "oracle_value": log.oracle_value(),
        "uniform_value": log.uniform_value(),
        "bayes_auc": log.bayes_auc(),
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "wrote {} rows to {}{}\n  observed click rate {:.4} · true value of the logged actions {:.4}\n  oracle {:.4} · uniform {:.4} · Bayes-optimal AUC {:.4}",
            log.rows.len(),
            out.display(),
            a.truth
                .as_ref()
                .map(|t| format!(" (truth: {})", t.display()))
                .unwrap_or_default(),
            log.mean_reward(),
            log.logged_value(),
            log.oracle_value(),
            log.uniform_value(),
            log.bayes_auc()
        );
    }
    Ok(())
}

fn run_online(a: &Args) -> anyhow::Result<()> {
    check_candidates(&a.candidates)?;
    let cfg = OnlineConfig {
        url: a.url.clone(),
        users: a.users,
        seed: a.seed,
        concurrency: a.concurrency.max(1),
        slot: a.slot.clone(),
        candidates: a.candidates.clone(),
        mix: a.mix,
        speed: a.speed,
        timeout: Duration::from_secs(a.timeout_s.max(1)),
    };
    let report = online::run(&cfg)?;
    if let Some(path) = &a.records {
        let mut w = create(path)?;
        for d in &report.decisions {
            serde_json::to_writer(&mut w, d)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let s = &report.summary;
    if a.json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        println!("{s}");
        let r = expected_rates(
            &GroundTruth::new(&cfg.candidates),
            &cfg.mix,
            100_000,
            a.seed,
        );
        println!(
            "  (audience expectation: oracle CTR {:.1}%, uniform {:.1}%, best single variant {} {:.1}%)",
            r.oracle * 100.0,
            r.uniform * 100.0,
            r.best_fixed_variant,
            r.best_fixed * 100.0
        );
    }
    if s.users > 0 && s.users_completed == 0 {
        let first = report
            .users
            .iter()
            .find_map(|u| u.failure.clone())
            .unwrap_or_default();
        bail!("no simulated user completed; the first failure: {first}");
    }
    Ok(())
}

/// Runs `trimtab-sim`.
fn run(a: &Args) -> anyhow::Result<()> {
    if a.offline {
        run_offline(a)
    } else {
        run_online(a)
    }
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trimtab-sim: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
