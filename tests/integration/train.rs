//! `trimtab train` end to end through the binary: a log from `trimtab-sim --offline`, the
//! documented `--json` report (held-out split = the last 15 % of rows), k-fold cross-validation,
//! promotion into a registry (a second, worse candidate is refused), and clear errors with the
//! file and line for bad input.

use serde_json::Value;

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[test]
fn train_cli_reports_registers_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let log_s = log.to_str().unwrap();
    let out = std::process::Command::new(crate::support::sim_bin())
        .args(["--offline", "--rows", "2000", "--seed", "4", "--out", log_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = ok_json(run(&["train", "--log", log_s, "--json", "--epochs", "10"]));
    for m in ["auc", "pr_auc", "logloss", "mae"] {
        assert!(r["metrics"][m].is_number(), "{m}: {r}");
    }
    assert_eq!(r["rows"]["test"], 300, "the last 15 % of 2 000 rows: {r}");
    assert_eq!(
        r["rows"]["train"].as_u64().unwrap() + r["rows"]["validation"].as_u64().unwrap(),
        1700
    );
    assert!(r["metrics"]["auc"].as_f64().unwrap() > 0.6, "{r}");
    assert_eq!(r["calibration"].as_array().unwrap().len(), 10);

    let cv = ok_json(run(&[
        "train", "--log", log_s, "--json", "--epochs", "5", "--kfold", "3",
    ]));
    assert_eq!(cv["cv"]["k"], 3, "{cv}");
    assert_eq!(cv["cv"]["folds"].as_array().unwrap().len(), 3);

    // Into a registry: the first model is promoted; an untrained one (0 epochs) is refused.
    let models = dir.path().join("models");
    let m = models.to_str().unwrap();
    let first = ok_json(run(&[
        "train", "--log", log_s, "--json", "--epochs", "10", "--save", m, "--name", "click-x",
    ]));
    assert_eq!(first["promotion"]["promoted"], true, "{first}");
    let worse = ok_json(run(&[
        "train", "--log", log_s, "--json", "--epochs", "0", "--save", m, "--name", "click-x",
    ]));
    assert_eq!(worse["promotion"]["promoted"], false, "{worse}");
    let current = std::fs::read_to_string(models.join("click-x/CURRENT")).unwrap();
    assert_eq!(current.trim(), "1");
    assert!(!models.join("click-x/v2.safetensors").exists());

    // Bad input: the file and line are named; exit code 2.
    let bad = dir.path().join("bad.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"context\": [1.0], \"action\": \"x\"}\n");
    std::fs::write(&bad, text).unwrap();
    let out = run(&["train", "--log", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl") && err.contains("2001"), "{err}");
    let out = run(&["train", "--log", "/nonexistent/log.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/log.jsonl"));
}
