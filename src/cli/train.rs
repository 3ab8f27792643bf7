//! `trimtab train`: reads a logged-bandit-feedback JSONL file, trains the click model, prints
//! held-out metrics (a table, or one JSON object with `--json`), optionally cross-validates
//! and proposes the model to a registry. Owns the flags and the terminal output only; the
//! work is `trimtab_learn::model::train` and `…::registry`. Runs on the main thread; the progress bar
//! draws to stderr and is hidden with `--json` or when stderr is not a terminal.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use trimtab::learn::model::features::Dataset;
use trimtab::learn::model::mlp::{EpochStats, TrainConfig};
use trimtab::learn::model::registry::{DataInfo, FeatureInfo, ModelCard, Registry};
use trimtab::learn::model::train::{cross_validate, split, train, SplitConfig};
use trimtab::learn::ope::read_log;

/// Flags of `trimtab train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// JSONL log, one decision per line: {"context":[…],"actions":[[…]…]?,"action":i,"reward":r,"propensity":p}.
    /// The label is 1 when reward > 0.
    #[arg(long)]
    pub log: PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Share of rows held out for testing, taken from the end of the file.
    #[arg(long, default_value_t = 0.15)]
    pub test_fraction: f64,
    /// Share of the remaining rows used for early stopping, taken from their end.
    #[arg(long, default_value_t = 0.15)]
    pub validation_fraction: f64,
    /// Also run K-fold cross-validation (K ≥ 2) on the non-test rows.
    #[arg(long)]
    pub kfold: Option<usize>,
    /// Maximum epochs.
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Early-stopping patience in epochs.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Seed of initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of actions when the log has no per-action features (default: largest logged action + 1).
    #[arg(long)]
    pub actions: Option<usize>,
    /// Registry directory to propose the model to (e.g. models/); needs --name.
    #[arg(long, requires = "name")]
    pub save: Option<PathBuf>,
    /// Model name in the registry; needs --save.
    #[arg(long, requires = "save")]
    pub name: Option<String>,
}

fn progress_bar(args: &TrainArgs) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(args.epochs as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs `trimtab train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let path = args.log.display().to_string();
    let file = std::fs::File::open(&args.log).with_context(|| format!("cannot read {path}"))?;
    let rows = read_log(BufReader::new(file)).with_context(|| path.clone())?;
    let data = Dataset::from_rows(&rows, args.actions).with_context(|| path.clone())?;
    drop(rows);
    let cfg = TrainConfig {
        max_epochs: args.epochs,
        patience: args.patience,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let split_cfg = SplitConfig {
        test_fraction: args.test_fraction,
        validation_fraction: args.validation_fraction,
    };
    cfg.validate()?;
    let s = split(data.len(), &split_cfg).with_context(|| path.clone())?;

    let pb = progress_bar(args);
    let mut on_epoch = |e: &EpochStats| {
        pb.set_position(e.epoch as u64);
        pb.set_message(format!("train {:.4} val {:.4}", e.train_loss, e.val_loss));
    };

    let cv = match args.kfold {
        Some(k) => {
            pb.set_prefix(format!("{k}-fold cv"));
            let non_test = data.slice(0..s.test.start);
            Some(cross_validate(
                &non_test,
                k,
                &cfg,
                args.validation_fraction,
                &mut on_epoch,
            )?)
        }
        None => None,
    };
    pb.set_prefix("training");
    pb.set_position(0);
    let mut trained = train(&data, &cfg, &split_cfg, &mut on_epoch)?;
    pb.finish_and_clear();
    trained.report.cv = cv;

    if let (Some(dir), Some(name)) = (&args.save, &args.name) {
        let registry = Registry::new(dir);
        let card = ModelCard::new(
            DataInfo {
                source: path.clone(),
                rows: data.len(),
                positives: data.positives(),
                test_rows: trained.test.len(),
            },
            FeatureInfo {
                layout: data.layout.clone(),
                names: None,
            },
            trained.model.architecture().clone(),
            cfg.clone(),
        );
        let promotion = registry
            .propose(name, &trained.model, card, &trained.test)
            .map_err(|e| anyhow::anyhow!("registry {}: {e} ({})", dir.display(), e.code()))?;
        trained.report.promotion = Some(promotion);
    }

    if args.json {
        println!("{}", serde_json::to_string(&trained.report)?);
    } else {
        print!("{}", trained.report);
    }
    Ok(())
}
