//! The `trimtab` command line: `trimtab serve` runs the engine; `health` probes a running one
//! (the container's healthcheck); `config` shows the effective configuration and where each
//! value came from; `segment`, `ope`, `train` and `export-log` are tools around it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trimtab::config::{Config, Overrides};

mod cli;

/// mimalloc instead of glibc's malloc: the engine allocates on actix workers and frees on shard
/// threads (and back), which glibc serves through contended arenas and `malloc_consolidate`
/// (BENCHMARKS.md, session 7). `--features system-alloc` keeps the system's, for heaptrack.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives a freed page back to the OS only when the thread that freed it calls into the
/// allocator a second later (its purge delay); a shard that has just made its idle users compact
/// then sleeps. Forcing a collection there returns those pages at once.
#[cfg(not(feature = "system-alloc"))]
fn release_freed_pages() {
    // SAFETY: mi_collect takes no pointers; it only walks the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Turns transparent huge pages off for this process (Linux), unless `MIMALLOC_ALLOW_THP` is
/// set (then mimalloc's own choice stands). mimalloc asks for huge pages on its arenas and gives
/// freed memory back in 64 KiB pieces a second later; with THP on, the next allocation there
/// faults in and zeroes a whole 2 MiB page again, and a 2 MiB page stays resident for a few
/// live objects. Under the HTTP load this was 4% of the server's CPU (`clear_page_erms`, 0.6%
/// without) and a fifth of its resident memory (BENCHMARKS.md, fourteenth session). The flag
/// is the process's (`PR_SET_THP_DISABLE`), checked at every fault, so it holds for the arenas
/// mimalloc reserved before `main`.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes one flag of
        // this process; a kernel without it returns an error, which leaves things as they were.
        unsafe {
            let _ = libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// The version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TRIMTAB_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "trimtab",
    version = VERSION,
    about = "Real-time content micro-adjustments, in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: HTTP + WebSocket API, pipeline, rules.
    Serve(ServeArgs),
    /// Probe a running server's /readyz: exit 0 when it is ready, 1 otherwise (a container
    /// healthcheck that needs no curl).
    Health(HealthArgs),
    /// Print the effective configuration (the same flags as `serve`), each value with the layer
    /// that set it — default, file, env or flag. Secrets are redacted.
    Config(ConfigArgs),
    /// Cluster feature vectors offline (CSV with a header, or JSONL) into behavioural segments.
    Segment(SegmentArgs),
    /// Off-policy evaluation: replay a logged-bandit-feedback JSONL file through a policy and
    /// estimate its value (IPS, SNIPS, doubly robust, with 95% intervals). See docs/ope.md.
    Ope(OpeArgs),
    /// Train the click model (an MLP predicting P(reward > 0 | context, action)) on a
    /// logged-bandit-feedback JSONL file; report held-out metrics; optionally cross-validate
    /// and propose it to the model registry. See docs/model.md.
    Train(cli::train::TrainArgs),
    /// Moved: the simulator is its own binary, `trimtab-sim` (the server does not link it).
    #[command(hide = true, disable_help_flag = true)]
    Simulate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Write a bandit slot's logged decisions as JSONL (logged-bandit-feedback rows) from a
    /// data dir. For a running server use `GET /v1/bandits/{slot}/log` instead.
    ExportLog(ExportLogArgs),
    /// The master key that wraps the per-user keys in keys.bin: `generate` one, `rotate` a
    /// stopped server's keys.bin to another.
    Keys {
        #[command(subcommand)]
        command: cli::keys::KeysCommand,
    },
    /// The rule lab: `test` runs the rules' fixture files (scripts/tests/*.toml) through the
    /// server's decision step with a fixed clock.
    Rules {
        #[command(subcommand)]
        command: cli::rules::RulesCommand,
    },
}

#[derive(clap::Args)]
struct HealthArgs {
    /// Base URL of the server (default: `http://` + the configured `addr`, a wildcard address
    /// probed on loopback).
    #[arg(long)]
    url: Option<String>,
    /// Config file to read `addr` from (default: ./trimtab.toml if present; TRIMTAB_ADDR).
    #[arg(long, env = "TRIMTAB_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ConfigArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// One JSON object (`{"settings":[{key, value, source}]}`) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ExportLogArgs {
    /// Data dir of a stopped server.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// The bandit slot.
    #[arg(long)]
    slot: String,
    /// Output file (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Include decisions whose attribution window is still open (their reward may change).
    #[arg(long)]
    open: bool,
    /// Full records (slot, ts, candidates, variant, policy, group, outcomes) instead of rows.
    #[arg(long)]
    records: bool,
    /// Config file, for the master key (default: ./trimtab.toml if present;
    /// TRIMTAB_MASTER_KEY / TRIMTAB_MASTER_KEY_FILE).
    #[arg(long, env = "TRIMTAB_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct OpeArgs {
    /// JSONL log, one decision per line: {"context":[…],"actions":[[…]…]?,"action":i,"reward":r,"propensity":p}.
    #[arg(long)]
    log: PathBuf,
    /// The policy to evaluate.
    #[arg(long, value_parser = ["uniform", "egreedy", "linucb", "lints"])]
    policy: String,
    /// Number of actions when the log has no per-action features (default: largest logged action + 1).
    #[arg(long)]
    actions: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SegmentArgs {
    /// CSV with a header row (numeric columns; `id`/`user`/`user_id` columns are skipped), or
    /// JSONL with one array or object of numbers per line.
    #[arg(long)]
    input: PathBuf,
    /// Algorithm.
    #[arg(long, value_parser = ["kmeans", "gmm", "dbscan"], default_value = "gmm")]
    algo: String,
    /// Number of clusters (k-means, GMM); without it, chosen by BIC over --k-min..=--k-max.
    #[arg(long)]
    k: Option<usize>,
    #[arg(long, default_value_t = 2)]
    k_min: usize,
    #[arg(long, default_value_t = 8)]
    k_max: usize,
    /// DBSCAN radius in robust-scaled units (1 = one interquartile range).
    #[arg(long, default_value_t = 1.0)]
    eps: f32,
    /// DBSCAN: neighbours within eps (itself included) that make a core point.
    #[arg(long, default_value_t = 10)]
    min_points: usize,
    /// Random seed (runs are reproducible).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Include each row's 2-D PCA coordinates.
    #[arg(long)]
    projection: bool,
    /// Print JSON (`{"labels":[…],"segments":[…],…}`) instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (default: ./trimtab.toml if present).
    #[arg(long, env = "TRIMTAB_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free one).
    #[arg(long)]
    addr: Option<String>,
    /// Data dir (database, keys, secrets).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Rule scripts dir.
    #[arg(long)]
    scripts: Option<PathBuf>,
    /// Model registry dir.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Shard worker threads (0 = one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIMTAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: not in files, pipes or journald, nor with
    // NO_COLOR set (https://no-color.org).
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn segment(a: SegmentArgs) -> ExitCode {
    use trimtab::segments::{segment_file, Algo, Params};
    let algo: Algo = match a.algo.parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("trimtab segment: {e}");
            return ExitCode::from(2);
        }
    };
    let params = Params {
        k: a.k,
        k_min: a.k_min,
        k_max: a.k_max,
        eps: a.eps,
        min_points: a.min_points,
        seed: a.seed,
        projection: a.projection,
        ..Params::default()
    };
    match segment_file(&a.input, algo, &params) {
        Ok(out) if a.json => match serde_json::to_string(&out) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trimtab segment: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(out) => {
            println!(
                "{} rows, {} segments, {} noise",
                out.labels.len(),
                out.segments.len(),
                out.noise
            );
            for s in &out.segments {
                println!(
                    "  #{:<3} {:>7} users ({:>5.1}%)  {}",
                    s.id,
                    s.size,
                    f64::from(s.share) * 100.0,
                    s.description
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trimtab segment: {} ({})", e, e.code());
            ExitCode::from(2)
        }
    }
}

fn ope(a: OpeArgs) -> ExitCode {
    use std::io::BufReader;
    use trimtab::learn::bandit::PolicyKind;
    use trimtab::learn::ope::{evaluate, read_log, OpeConfig};
    let run = || -> Result<String, String> {
        let file = std::fs::File::open(&a.log)
            .map_err(|e| format!("cannot read {}: {e}", a.log.display()))?;
        let rows =
            read_log(BufReader::new(file)).map_err(|e| format!("{}: {e}", a.log.display()))?;
        let kind: PolicyKind = a.policy.parse().map_err(|e| format!("{e}"))?;
        let cfg = OpeConfig {
            n_actions: a.actions,
            ..OpeConfig::default()
        };
        let report = evaluate(&rows, kind, &cfg).map_err(|e| format!("{e}"))?;
        Ok(if a.json {
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        } else {
            report.to_string()
        })
    };
    match run() {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trimtab ope: {e}");
            ExitCode::from(2)
        }
    }
}

fn export_log(a: ExportLogArgs) -> ExitCode {
    let run = || -> Result<usize, String> {
        let overrides = Overrides {
            data: Some(a.data.clone()),
            ..Overrides::default()
        };
        let master = Config::load(a.config.as_deref(), &overrides)
            .and_then(|c| c.master_key())
            .map_err(|e| e.to_string())?;
        let body = trimtab_engine::service::export_bandit_log(
            &a.data,
            master.as_ref(),
            &a.slot,
            trimtab::now_ms(),
            a.open,
            a.records,
        )
        .map_err(|e| e.to_string())?;
        let n = body.iter().filter(|&&b| b == b'\n').count();
        match &a.out {
            Some(p) => std::fs::write(p, &body)
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?,
            None => {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&body)
                    .map_err(|e| e.to_string())?
            }
        }
        Ok(n)
    };
    match run() {
        Ok(n) => {
            eprintln!("trimtab export-log: {n} decisions of slot {:?}", a.slot);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trimtab export-log: {e}");
            ExitCode::from(2)
        }
    }
}

/// The flags of `serve` that override the configuration.
fn overrides(a: &ServeArgs) -> Overrides {
    Overrides {
        addr: a.addr.clone(),
        data: a.data.clone(),
        scripts: a.scripts.clone(),
        models: a.models.clone(),
        shards: a.shards,
        log_format: a.log_format.clone(),
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    // Fault injection for the fault tests: `FAILPOINTS=writer-commit=panic` (only in a build
    // with the `failpoints` feature; the points compile to nothing otherwise).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "system-alloc"))]
    trimtab_util::memory::set_release(release_freed_pages);
    let cli = Cli::parse();
    match cli.command {
        Command::ExportLog(a) => export_log(a),
        Command::Ope(a) => ope(a),
        Command::Train(a) => match cli::train::run(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trimtab train: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Segment(a) => segment(a),
        Command::Rules { command } => cli::rules::run(&command),
        Command::Keys { command } => match cli::keys::run(&command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trimtab keys: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Simulate { .. } => {
            eprintln!(
                "trimtab simulate: the simulator is its own binary now: run `trimtab-sim` with \
                 the same arguments (`cargo run --release -p trimtab-sim -- --help`)"
            );
            ExitCode::from(2)
        }
        Command::Health(a) => {
            let url = match a.url {
                Some(u) => u,
                None => match Config::load(a.config.as_deref(), &Overrides::default()) {
                    Ok(c) => cli::health::url_for(&c.addr),
                    Err(e) => {
                        eprintln!("trimtab health: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            match cli::health::probe(url.trim_end_matches('/')) {
                Ok(status) => {
                    println!("{url}: {status}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("trimtab health: {why}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Config(a) => {
            let overrides = overrides(&a.serve);
            match Config::explain(a.serve.config.as_deref(), &overrides) {
                Ok((_, settings)) => {
                    if a.json {
                        println!("{}", serde_json::json!({ "settings": settings }));
                    } else {
                        for s in &settings {
                            println!("{:<40} {:<28} {}", s.key, s.value.to_string(), s.source);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trimtab: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve(a) => {
            let overrides = overrides(&a);
            let cfg = match Config::load(a.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("trimtab: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log_format);
            let result = trimtab::app::serve(cfg, |_addr, url| {
                use std::io::Write;
                println!("trimtab listening on {url}");
                let _ = std::io::stdout().flush();
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("trimtab: {e:#}");
                    match e.downcast_ref::<trimtab::app::FatalExit>() {
                        Some(f) => ExitCode::from(f.exit_code()),
                        None => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}
