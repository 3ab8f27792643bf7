//! `trimtab rules`: the rule lab on the command line.
//! - `rules test` runs the fixture files (`scripts/tests/*.toml`, see
//!   [`trimtab::lab::fixture`]) against the rules of the scripts dir through the server's own
//!   decision step, with the config's features, caps, rule limits, experiments and bandits;
//!   prints each case with a diff of what was expected against what came, and exits 1 if any
//!   case fails (2 if the fixtures or rules cannot be run at all).

use std::path::PathBuf;
use std::process::ExitCode;

use trimtab::config::{Config, Overrides};
use trimtab::lab::{fixture, LabConfig};

#[derive(clap::Subcommand)]
pub enum RulesCommand {
    /// Run the rules' fixture tests.
    Test(TestArgs),
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
