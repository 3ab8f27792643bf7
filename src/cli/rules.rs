//! `trimtab rules`: the rule lab on the command line.
//! - `rules test` runs the fixture files (`scripts/tests/*.toml`, see
//!   [`trimtab::lab::fixture`]) against the rules of the scripts dir through the server's own
//!   decision step, with the config's features, caps, rule limits, experiments and bandits;
//!   prints each case with a diff of what was expected against what came, and exits 1 if any
//!   case fails (2 if the fixtures or rules cannot be run at all).
//! - `rules backtest` replays a rule file with the installed rules over a stopped server's
//!   stored events (`--data`), or over events in a JSONL file (`--events`, e.g. the
//!   simulator's audience: `trimtab-sim --offline --events FILE`), and prints what it would
//!   have done (see [`trimtab::lab::backtest`]).

use std::path::PathBuf;
use std::process::ExitCode;

use trimtab::config::{Config, Overrides};
use trimtab::lab::{fixture, LabConfig};

#[derive(clap::Subcommand)]
pub enum RulesCommand {
    /// Run the rules' fixture tests.
    Test(TestArgs),
    /// Backtest a rule file on recorded traffic (a stopped server's data dir, or a JSONL file
    /// of events) with the installed rules; nothing is written.
    Backtest(BacktestArgs),
}

#[derive(clap::Args)]
pub struct BacktestArgs {
    /// The rule to backtest (a .rhai file; its stem names it, replacing an installed rule of
    /// that name).
    #[arg(long)]
    rule: PathBuf,
    /// Data dir of a stopped server (default: the configured one).
    #[arg(long, conflicts_with = "events")]
    data: Option<PathBuf>,
    /// Replay these events instead: JSONL, one wire event per line with its `user`.
    #[arg(long)]
    events: Option<PathBuf>,
    /// The installed rules (default: the configured `scripts`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Config file (default: ./trimtab.toml if present).
    #[arg(long, env = "TRIMTAB_CONFIG")]
    config: Option<PathBuf>,
    /// Events received at or after this time (Unix ms).
    #[arg(long)]
    from_ms: Option<i64>,
    /// Events received before this time (Unix ms).
    #[arg(long)]
    to_ms: Option<i64>,
    /// The share of users to replay, in (0, 1].
    #[arg(long)]
    sample: Option<f64>,
    /// Events to replay at most (default 200000; they are held in memory).
    #[arg(long)]
    max_events: Option<u64>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The rules dir (default: the configured `scripts`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The fixture files' dir (default: `tests` in the rules dir).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Config file (default: ./trimtab.toml if present): features, caps, rule limits and the
    /// experiments' and bandits' dirs come from it.
    #[arg(long, env = "TRIMTAB_CONFIG")]
    config: Option<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: &RulesCommand) -> ExitCode {
    match cmd {
        RulesCommand::Backtest(a) => match backtest(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trimtab rules backtest: {e:#}");
                ExitCode::from(2)
            }
        },
        RulesCommand::Test(a) => match test(a) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("trimtab rules test: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn test(a: &TestArgs) -> anyhow::Result<bool> {
    let overrides = Overrides {
        scripts: a.dir.clone(),
        ..Overrides::default()
    };
    let cfg = Config::load(a.config.as_deref(), &overrides)?;
    let lab = LabConfig::of(&cfg);
    let dir = a
        .fixtures
        .clone()
        .unwrap_or_else(|| cfg.scripts.join("tests"));
    let files = fixture::files(&dir)?;
    if files.is_empty() {
        anyhow::bail!("no fixture files (*.toml) in {}", dir.display());
    }
    let mut results = Vec::new();
    for f in &files {
        results.extend(fixture::run_file(f, &cfg.scripts, &lab)?);
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    if a.json {
        let v = serde_json::json!({
            "passed": results.len() - failed,
            "failed": failed,
            "cases": results,
        });
        println!("{v}");
    } else {
        let mut file = "";
        for r in &results {
            if r.file != file {
                file = &r.file;
                println!("{file}");
            }
            println!("  {}  {}", if r.passed { "ok  " } else { "FAIL" }, r.name);
            if !r.passed {
                print!("{}", r.diff());
            }
        }
        println!(
            "{} cases: {} passed, {failed} failed",
            results.len(),
            results.len() - failed
        );
    }
    Ok(failed == 0)
}

fn backtest(a: &BacktestArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use trimtab::lab::backtest::Request;
    let overrides = Overrides {
        scripts: a.dir.clone(),
        data: a.data.clone(),
        ..Overrides::default()
    };
    let cfg = Config::load(a.config.as_deref(), &overrides)?;
    let source = std::fs::read_to_string(&a.rule)
        .with_context(|| format!("reading {}", a.rule.display()))?;
    let name = a
        .rule
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("candidate")
        .to_string();
    let req = Request {
        source,
        name: Some(name),
        from_ms: a.from_ms,
        to_ms: a.to_ms,
        sample: a.sample,
        max_events: a.max_events,
    };
    if let Err((field, msg)) = req.validate() {
        anyhow::bail!("{field}: {msg}");
    }
    let lab = LabConfig::of(&cfg);
    let out = match &a.events {
        Some(f) => trimtab_engine::service::backtest_events_file(f, lab, &cfg.scripts, &req)?,
        None => trimtab_engine::service::backtest_data_dir(
            &cfg.data,
            cfg.master_key()?.as_ref(),
            lab,
            &cfg.scripts,
            &req,
        )?,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{}: replayed {} events of {} users ({} sessions){}",
        out.rule,
        out.events,
        out.users,
        out.sessions,
        if out.truncated {
            ", stopped at --max-events"
        } else {
            ""
        }
    );
    println!(
        "fires for {} users, {} sessions ({} decisions)",
        out.fired_users, out.fired_sessions, out.decisions
    );
    for c in &out.by_variant {
        println!(
            "  {} = {}: {} users, {} sessions",
            c.slot, c.variant, c.users, c.sessions
        );
    }
    if out.fired_sessions > 0 {
        println!("first firing, from the session's first event:");
        let mut lower = 0;
        for b in &out.time_to_fire {
            let label = match b.le_ms {
                Some(le) => format!("{:>5} – {:<5}", secs(lower), secs(le)),
                None => format!("{:>5} and later", secs(lower)),
            };
            println!("  {label} {:>6} sessions", b.sessions);
            lower = b.le_ms.unwrap_or(lower);
        }
    }
    for c in &out.conflicts {
        println!(
            "conflict: {} also decides slot {} in {} of those sessions",
            c.rule, c.slot, c.sessions
        );
    }
    let r = &out.rule_runs;
    println!(
        "{} runs, {} failed, {} operations{}",
        r.runs,
        r.failures,
        r.operations,
        if r.disabled {
            " (disabled by its failures)"
        } else {
            ""
        }
    );
    if let Some(e) = &r.last_error {
        println!("last error: {} at {}", e.message, e.location);
    }
    for e in &out.examples {
        println!(
            "e.g. user {} session {}: {} = {} after {}",
            e.key,
            e.session,
            e.slot,
            e.variant,
            secs(e.after_ms)
        );
    }
    Ok(())
}

fn secs(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}
