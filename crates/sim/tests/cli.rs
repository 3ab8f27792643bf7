//! `trimtab-sim` through its binary, offline (no server): the log and ground truth it writes,
//! and clear errors for bad arguments. (Online runs against a real server are tested by the
//! server's integration tests, which run this binary.)

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trimtab-sim"))
        .args(args)
        .output()
        .expect("run trimtab-sim")
}

#[test]
fn offline_writes_a_log_and_its_ground_truth_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let (log, truth) = (dir.path().join("log.jsonl"), dir.path().join("truth.jsonl"));
    let out = sim(&[
        "--offline",
        "--rows",
        "300",
        "--seed",
        "2",
        "--candidates",
        "control,urgent",
        "--out",
        log.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 300);
    for r in &rows {
        let a = r["action"].as_u64().unwrap();
        assert!(a < 2, "{r}");
        // Uniform logging over two candidates.
        assert!(
            (r["propensity"].as_f64().unwrap() - 0.5).abs() < 1e-9,
            "{r}"
        );
        assert!(
            r["context"].as_array().is_some_and(|c| !c.is_empty()),
            "{r}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&truth).unwrap().lines().count(),
        300
    );
    // The same seed writes the same log.
    let again = dir.path().join("again.jsonl");
    let out = sim(&[
        "--offline",
        "--rows",
        "300",
        "--seed",
        "2",
        "--candidates",
        "control,urgent",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&log).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn bad_arguments_exit_2_saying_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let out = sim(&["--offline", "--rows", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    let out = sim(&[
        "--offline",
        "--out",
        log.to_str().unwrap(),
        "--logging-weights",
        "1,2",
        "--candidates",
        "a,b,c",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--logging-weights has 2 entries for 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
