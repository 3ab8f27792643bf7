//! Configuration and startup errors are clear: a locked data dir, unknown config keys.

use std::time::Duration;

use crate::support::*;

#[test]
fn second_server_on_the_same_data_dir_exits_saying_locked() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let (st, stderr) = s.run_second_instance(Duration::from_secs(20));
    assert!(!st.success(), "second instance exited with {st}");
    assert!(
        stderr.to_lowercase().contains("locked"),
        "stderr does not mention the lock:\n{stderr}"
    );
    // The first one is unaffected.
    assert_eq!(s.get("/healthz", None).status, 200);
    let t = s.identify("still-fine");
    s.post_ok(&t, vec![custom(&eid("x"), "x", serde_json::Value::Null)]);
}

fn run_with_config(config: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("trimtab.toml");
    std::fs::write(&cfg, config).expect("config");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("scripts");
    run_to_exit(
        &dir.path().join("data"),
        &scripts,
        &cfg,
        &dir.path().join("stderr.log"),
        Duration::from_secs(15),
    )
}

#[test]
fn unknown_config_keys_exit_2_naming_the_key() {
    for (config, key) in [
        ("shardz = 2\n", "shardz"),
        ("[pipeline]\nshard_queu = 4\n", "shard_queu"),
        ("[delivery]\nauth_timeout = 1\n", "auth_timeout"),
    ] {
        let (st, stderr) = run_with_config(config);
        assert_eq!(
            st.code(),
            Some(2),
            "config {config:?}: {st}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "config {config:?}: the key is not named:\n{stderr}"
        );
    }
    // A bad value is refused the same way.
    let (st, stderr) = run_with_config("log_format = \"xml\"\n");
    assert_eq!(st.code(), Some(2), "{st}; stderr:\n{stderr}");
    assert!(stderr.contains("log_format"), "{stderr}");
}

/// `[rules]` is part of the config like every other section: a typo there is an error too.
#[test]
fn unknown_key_in_rules_section_exits_2() {
    let (st, stderr) = run_with_config("[rules]\nmax_operationz = 5\n");
    assert_eq!(
        st.code(),
        Some(2),
        "a typo in [rules] was accepted ({st}); stderr:\n{stderr}"
    );
    assert!(stderr.contains("max_operationz"), "{stderr}");
}
