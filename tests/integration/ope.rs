//! `trimtab ope`: off-policy evaluation of a logged-bandit-feedback file, end to end through the
//! binary, on a log made by the seeded simulator with known ground truth.

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use trimtab::learn::bandit::{Policy, Uniform};
use trimtab::learn::ope::write_log;
use trimtab::learn::sim::Environment;

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn ope_cli_estimates_cover_the_true_value_of_uniform() {
    let env = Environment::new(4, 5, 7);
    let mut rng = StdRng::seed_from_u64(11);
    let mut logging = Uniform::new(env.ctx_dim(), env.n_actions());
    let rows = env.log(4_000, &mut logging, false, &mut rng);
    let truth = env.true_value(&logging as &dyn Policy, 20_000, &mut rng);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    write_log(std::fs::File::create(&path).unwrap(), &rows).unwrap();

    let out = run(&[
        "ope",
        "--log",
        path.to_str().unwrap(),
        "--policy",
        "uniform",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"], "uniform");
    assert_eq!(v["rows"], 4_000);
    assert!(v["examples_per_s"].as_f64().unwrap() > 0.0);
    for est in ["ips", "snips", "dr"] {
        let e = &v["estimates"][est];
        let (lo, hi) = (e["ci"][0].as_f64().unwrap(), e["ci"][1].as_f64().unwrap());
        assert!(
            lo <= e["value"].as_f64().unwrap() && e["value"].as_f64().unwrap() <= hi,
            "{e}"
        );
        // The logging policy evaluated on its own log: the interval covers its true value.
        assert!(
            lo <= truth && truth <= hi,
            "{est}: [{lo}, {hi}] misses {truth}"
        );
    }
    // A learning policy runs too; the text form is readable.
    let out = run(&["ope", "--log", path.to_str().unwrap(), "--policy", "linucb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .to_lowercase()
        .contains("ips"));

    // A malformed line is reported with its line number and exit code 2.
    std::fs::write(
        &path,
        "{\"context\":[1.0],\"action\":0,\"reward\":1,\"propensity\":0.5}\nnot json\n",
    )
    .unwrap();
    let bad = run(&[
        "ope",
        "--log",
        path.to_str().unwrap(),
        "--policy",
        "uniform",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains('2'),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
