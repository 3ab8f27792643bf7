//! The `trimtab` command line: `trimtab serve` runs the engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trimtab::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "trimtab",
    version,
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIMTAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => {
            let overrides = Overrides {
                addr: a.addr,
                data: a.data,
                scripts: a.scripts,
                models: a.models,
                shards: a.shards,
                log_format: a.log_format,
            };
            let cfg = match Config::load(a.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("trimtab: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log_format);
            let result = trimtab::app::serve(cfg, |addr| {
                use std::io::Write;
                println!("trimtab listening on http://{addr}");
                let _ = std::io::stdout().flush();
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("trimtab: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
