//! Writes a synthetic logged-bandit-feedback JSONL file to stdout for `trimtab train`,
//! `trimtab ope` and `benches/compare_train.sh`: contexts `x ~ N(0, I_d)`, K one-hot actions
//! chosen uniformly (propensity 1/K, with the bandit's default exploration floor), clicks drawn
//! from the seeded logistic ground truth of `trimtab::learn::sim`.
//!
//! `cargo run --release --example gen_log -- --rows 20000 --seed 1 [--actions 4] [--dim 12] > log.jsonl`

use std::io::{BufWriter, Write};

use rand::{rngs::StdRng, SeedableRng};
use trimtab::learn::bandit::{new_policy, Params, PolicyKind};
use trimtab::learn::ope::write_log;
use trimtab::learn::sim::Environment;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut rows, mut seed, mut k, mut d) = (20_000usize, 1u64, 4usize, 12usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rows" => rows = value.parse()?,
            "--seed" => seed = value.parse()?,
            "--actions" => k = value.parse()?,
            "--dim" => d = value.parse()?,
            _ => {
                return Err(
                    format!("unknown flag {flag}; use --rows --seed --actions --dim").into(),
                )
            }
        }
    }
    let env = Environment::new(k, d, seed);
    let mut logging = new_policy(PolicyKind::Uniform, d, k, &Params::default())?;
    let log = env.log(
        rows,
        logging.as_mut(),
        false,
        &mut StdRng::seed_from_u64(seed + 1),
    );
    let mut out = BufWriter::new(std::io::stdout().lock());
    write_log(&mut out, &log)?;
    out.flush()?;
    Ok(())
}
