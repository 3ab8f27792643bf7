//! `trimtab keys`: the master key that wraps the per-user keys in `keys.bin`.
//! - `keys generate` prints a new random master key (64 hex characters) for
//!   `TRIMTAB_MASTER_KEY` or a `master_key_file`.
//! - `keys rotate` re-wraps `keys.bin` of a stopped server: from the key in force (config or
//!   environment, as `serve` reads it; none if the file is not wrapped yet) to the one in
//!   `--new-key-file`, or back to unwrapped with `--unwrap`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use trimtab::config::{Config, Overrides};
use trimtab::privacy::MasterKey;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (64 hex characters).
    Generate,
    /// Re-wrap keys.bin of a stopped server with a new master key.
    Rotate(RotateArgs),
}

#[derive(clap::Args)]
pub struct RotateArgs {
    /// Data dir (default: the configured one).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Config file (default: ./trimtab.toml if present); the current key comes from it or
    /// from TRIMTAB_MASTER_KEY / TRIMTAB_MASTER_KEY_FILE.
    #[arg(long, env = "TRIMTAB_CONFIG")]
    config: Option<PathBuf>,
    /// The file with the new key (64 hex characters; `trimtab keys generate > FILE`).
    #[arg(long, conflicts_with = "unwrap")]
    new_key_file: Option<PathBuf>,
    /// Store the keys unwrapped again (no master key).
    #[arg(long)]
    unwrap: bool,
}

pub fn run(cmd: &KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate => {
            println!("{}", MasterKey::generate().to_hex());
            Ok(())
        }
        KeysCommand::Rotate(a) => rotate(a),
    }
}

fn rotate(a: &RotateArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: a.data.clone(),
        ..Overrides::default()
    };
    let cfg = Config::load(a.config.as_deref(), &overrides)?;
    let current = cfg.master_key()?;
    let new = match (&a.new_key_file, a.unwrap) {
        (Some(f), false) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Some(MasterKey::parse(&text).with_context(|| format!("the key in {}", f.display()))?)
        }
        (None, true) => None,
        _ => bail!("give --new-key-file FILE (or --unwrap)"),
    };
    let n = trimtab_engine::service::rewrap_keys(&cfg.data, current.as_ref(), new.as_ref())
        .map_err(anyhow::Error::msg)?;
    match &new {
        Some(k) => eprintln!(
            "trimtab keys rotate: {n} user keys in {}/keys.bin re-wrapped (new key's check value {}); start the server with the new key",
            cfg.data.display(),
            hex::encode(k.check())
        ),
        None => eprintln!(
            "trimtab keys rotate: {n} user keys in {}/keys.bin stored unwrapped; start the server without a master key",
            cfg.data.display()
        ),
    }
    Ok(())
}
