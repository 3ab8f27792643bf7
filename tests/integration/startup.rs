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

#[test]
fn unknown_config_keys_exit_2_naming_the_key() {
    for (config, key) in [
        ("shardz = 2\n", "shardz"),
        ("[pipeline]\nshard_queu = 4\n", "shard_queu"),
        ("[delivery]\nauth_timeout = 1\n", "auth_timeout"),
    ] {
        let (st, stderr) = run_with_config_file(config);
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
    let (st, stderr) = run_with_config_file("log_format = \"xml\"\n");
    assert_eq!(st.code(), Some(2), "{st}; stderr:\n{stderr}");
    assert!(stderr.contains("log_format"), "{stderr}");
}

/// `[rules]` is part of the config like every other section: a typo there is an error too.
#[test]
fn unknown_key_in_rules_section_exits_2() {
    let (st, stderr) = run_with_config_file("[rules]\nmax_operationz = 5\n");
    assert_eq!(
        st.code(),
        Some(2),
        "a typo in [rules] was accepted ({st}); stderr:\n{stderr}"
    );
    assert!(stderr.contains("max_operationz"), "{stderr}");
}

fn trimtab(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"));
    c.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIMTAB_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied()).output().expect("run trimtab")
}

/// `trimtab health` is a container healthcheck: exit 0 against a ready server, 1 once it is
/// gone; and the server's piped log carries no colour codes.
#[test]
fn health_exits_0_when_ready_and_1_when_stopped_and_piped_logs_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(Opts::with_repo_scripts(""));
    let out = trimtab(&["health", "--url", &s.base], dir.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready"));
    // The default URL comes from the configured address (a wildcard one probed on loopback).
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let addr = format!("0.0.0.0:{port}");
    let out = trimtab(&["health"], dir.path(), &[("TRIMTAB_ADDR", &addr)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = s.stderr();
    assert!(log.contains("definition loaded"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log}"
    );
    // Each rule's load is logged once.
    assert_eq!(log.matches("name=\"scroll_offer\"").count(), 1, "{log}");
    s.kill9();
    let out = trimtab(&["health", "--url", &s.base], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
}

/// `trimtab config` shows every value in force and the layer that set it; secrets redacted.
#[test]
fn config_names_the_layer_of_every_value_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trimtab.toml"),
        "token_ttl_s = 600\n[pipeline]\nindex_ms = 250\n",
    )
    .unwrap();
    let out = trimtab(
        &["config", "--json", "--shards", "3"],
        dir.path(),
        &[
            ("TRIMTAB_ADMIN_TOKEN", "very-secret-admin-token"),
            ("TRIMTAB_PIPELINE__INDEX_MS", "750"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("very-secret"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let get = |k: &str| {
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in {v}"))
    };
    let pair = |k: &str| {
        let s = get(k);
        (
            s["value"].clone(),
            s["source"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(pair("shards"), (3.into(), "flag".into()));
    assert_eq!(
        pair("pipeline.index_ms"),
        (750.into(), "env TRIMTAB_PIPELINE__INDEX_MS".into())
    );
    assert_eq!(
        pair("token_ttl_s"),
        (600.into(), "file trimtab.toml".into())
    );
    assert_eq!(pair("anonymous"), (true.into(), "default".into()));
    assert_eq!(
        pair("admin_token"),
        ("(set)".into(), "env TRIMTAB_ADMIN_TOKEN".into())
    );
    // A bad value is refused as `serve` would refuse it.
    let out = trimtab(&["config"], dir.path(), &[("TRIMTAB_LOG_FORMAT", "xml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_format"));
}

/// The same value as admin token and write key is refused at startup, naming both; and a data
/// dir the server creates is private: the dir 0700, the database, key store and secrets 0600.
#[test]
fn identical_credentials_are_refused_and_the_data_dir_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let same = "one-credential-for-all";
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"));
    c.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--data",
        "data",
        "--scripts",
        ".",
    ])
    .current_dir(dir.path())
    .env("TRIMTAB_ADMIN_TOKEN", same)
    .env("TRIMTAB_WRITE_KEY", same)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let exited = poll(Duration::from_secs(15), || child.try_wait().unwrap());
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        exited.is_some_and(|st| !st.success()),
        "kept running: {stderr}"
    );
    assert!(
        stderr.contains("admin_token and write_key are the same"),
        "{stderr}"
    );

    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(Opts::config(""));
    let mode = |name: &str| {
        std::fs::metadata(s.data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for f in ["trimtab.redb", "keys.bin", "secrets.toml"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
}

/// A `keys.bin` cut short (a partial copy or restore) is refused at the start, naming the file
/// and what is missing, instead of silently losing the users whose keys were cut; the whole file
/// starts again.
#[test]
fn a_truncated_key_store_is_refused_at_start() {
    let mut s = Server::start(Opts::config(""));
    for i in 0..6 {
        let t = s.identify(&format!("keyed-{i}"));
        s.post_ok(&t, vec![custom(&eid("k"), "x", serde_json::Value::Null)]);
    }
    s.sigterm();
    assert!(s
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|st| st.success()));
    let keys = s.data.join("keys.bin");
    let whole = std::fs::read(&keys).unwrap();
    assert_eq!(whole.len(), 8 + 6 * 48, "six users, six slots");

    std::fs::write(&keys, &whole[..8 + 3 * 48 + 20]).unwrap();
    let (st, stderr) = s.run_second_instance(Duration::from_secs(20));
    assert!(!st.success());
    assert!(stderr.contains("keys.bin"), "{stderr}");
    assert!(
        stderr.contains("holds 3 key slots but the database has seen 6"),
        "{stderr}"
    );

    std::fs::write(&keys, &whole).unwrap();
    s.restart();
    let t = s.identify("keyed-4");
    assert_eq!(s.get("/v1/me", Some(&t)).status, 200);
}

/// The server turns transparent huge pages off for itself (Linux): with them, mimalloc's freed
/// pieces of 64 KiB come back as whole 2 MiB pages, zeroed at every fault and resident for a
/// few live objects. `MIMALLOC_ALLOW_THP` leaves the choice to mimalloc.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    fn thp_enabled(pid: u32) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    }
    // A kernel without THP, or too old to report it (before 5.0), has nothing to check.
    if thp_enabled(std::process::id()).as_deref() != Some("1") {
        eprintln!("this kernel reports no transparent huge pages for the test: nothing to check");
        return;
    }
    let s = Server::start(Opts::with_repo_scripts(""));
    assert_eq!(thp_enabled(s.pid()).as_deref(), Some("0"));
    let mut opts = Opts::with_repo_scripts("");
    opts.env
        .push(("MIMALLOC_ALLOW_THP".to_string(), "1".to_string()));
    let s = Server::start(opts);
    assert_eq!(thp_enabled(s.pid()).as_deref(), Some("1"));
}

/// The background jobs — the model trainer and the segmenter, each a thread and a rayon pool
/// (candle's matrix products run on the trainer's) — run at nice +19, while the shards, which
/// answer events, stay at the process's nice value.
#[cfg(target_os = "linux")]
#[test]
fn background_jobs_run_at_nice_19_and_the_shards_do_not() {
    /// (thread name as the kernel keeps it, at most 15 bytes; nice value) of each thread.
    fn threads(pid: u32) -> Vec<(String, i64)> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        dir.filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(") ")?;
            let name = head.split_once(" (")?.1.to_string();
            // Field 19 of stat is the nice value; `rest` starts at field 3.
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
    }
    let s = Server::start(Opts::with_repo_scripts(""));
    let count = |ts: &[(String, i64)], prefix: &str, nice: i64| {
        ts.iter()
            .filter(|(n, v)| n.starts_with(prefix) && *v == nice)
            .count()
    };
    // The trainer's thread lowers itself as it starts; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ts = loop {
        let ts = threads(s.pid());
        let trainer = count(&ts, "trimtab-trainer", 19);
        if trainer >= 2 || std::time::Instant::now() > deadline {
            break ts;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let named = |prefix: &str| ts.iter().filter(|(n, _)| n.starts_with(prefix)).count();
    // The trainer's thread and its pool ("trimtab-trainer-pool", cut to 15 bytes), at 19.
    assert!(named("trimtab-trainer") >= 2, "{ts:?}");
    assert_eq!(
        count(&ts, "trimtab-trainer", 19),
        named("trimtab-trainer"),
        "{ts:?}"
    );
    // The segmenter's thread and its one-thread pool, at 19.
    assert!(named("trimtab-segment") >= 2, "{ts:?}");
    assert_eq!(
        count(&ts, "trimtab-segment", 19),
        named("trimtab-segment"),
        "{ts:?}"
    );
    // The shards answer events: the process's own nice value (the test's), not 19.
    let own = threads(std::process::id())
        .first()
        .map(|(_, v)| *v)
        .expect("the test's own nice value");
    assert!(named("trimtab-shard") >= 1, "{ts:?}");
    assert_eq!(
        count(&ts, "trimtab-shard", own),
        named("trimtab-shard"),
        "{ts:?}"
    );
}
