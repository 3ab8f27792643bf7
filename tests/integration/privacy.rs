//! Privacy: erasure leaves no trace of the user in the data dir (the raw id is never there at
//! all), and consent decides what is stored and whether anything is personalised.

use serde_json::{json, Value};

use crate::support::*;

const RAW_USER: &str = "erase-me-USER-4e1f9c2a@example.org";
const CANARY: &str = "CANARY-b7d3e91f-0a6c-4f2e";

/// The user's pseudonymous key, as anyone holding the data dir's `secrets.toml` computes it.
fn user_key(s: &Server, raw: &str) -> [u8; 16] {
    let secrets =
        trimtab_privacy::Secrets::load_or_create(&s.data, Some(ADMIN_TOKEN), Some(WRITE_KEY))
            .expect("secrets.toml");
    trimtab_privacy::Pseudonymizer::new(secrets.pseudonym_key)
        .user(raw)
        .0
}

fn assert_nowhere(s: &Server, needle: &str, when: &str) {
    let hits = files_containing(&s.data, needle.as_bytes());
    assert!(
        hits.is_empty(),
        "{needle:?} found {when} in {hits:?} (files: {:?})",
        files_under(&s.data)
    );
}

#[test]
fn erasure_removes_every_trace_and_raw_ids_never_reach_disk() {
    let mut s = Server::start(Opts::with_repo_scripts(""));
    let t = s.identify(RAW_USER);
    let mut ws = s.ws_connect(&t);
    ws.send_acked(vec![page_view(&eid("pv"), "/article/canary")]);
    ws.send_acked(vec![
        custom(&eid("c"), "note", json!({ "text": CANARY })),
        hover(&eid("h"), CANARY, "start", 0),
        hover(&eid("h"), CANARY, "end", 1200),
        click(&eid("k"), CANARY),
    ]);
    // A decision is stored for this user too.
    ws.send_events(vec![scroll(&eid("sc"), 95.0, "/article/canary")]);
    ws.wait_adjust("offer", deadline(WAIT))
        .expect("offer adjustment");
    // The write key path too, naming the raw id.
    s.post_ok(
        WRITE_KEY,
        vec![for_user(
            custom(&eid("w"), "server-side", json!({ "v": CANARY })),
            RAW_USER,
        )],
    );

    let ex = s.export(RAW_USER).expect("export");
    assert!(
        ex.to_string().contains(CANARY),
        "export lacks the canary: {ex}"
    );
    assert!(
        ex["events"].as_array().is_some_and(|e| e.len() == 7),
        "{ex}"
    );
    assert!(
        ex["decisions"].as_array().is_some_and(|d| !d.is_empty()),
        "{ex}"
    );
    // Pseudonymous and encrypted at rest: neither the raw id nor the canary is on disk.
    assert_nowhere(&s, RAW_USER, "before erasure");
    assert_nowhere(&s, CANARY, "before erasure (not encrypted at rest?)");
    // The pseudonymous key ties rows to the user in keys.bin only (rows and log records are
    // filed by a row id derived from the user's data key). A graceful stop first, so that the
    // state, the ids seen and the heads are checkpointed into the database too.
    let key = user_key(&s, RAW_USER);
    drop(ws);
    s.sigterm();
    assert!(s.wait_exit(WAIT).is_some_and(|st| st.success()));
    s.restart();
    let mut ws = s.ws_connect(&t);
    assert!(s.export(RAW_USER).is_some());
    assert_eq!(
        files_containing(&s.data, &key),
        [s.data.join("keys.bin")],
        "the user key outside keys.bin"
    );

    let r = s.delete(&format!("/v1/users/{RAW_USER}"), Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(s.export(RAW_USER).is_none(), "export after erasure");
    let me = s.get("/v1/me", Some(&t));
    assert_eq!(me.status, 404, "{}", me.body);
    // The user's socket is closed by the erasure.
    assert!(
        ws.wait_close(deadline(WAIT)).is_ok(),
        "socket not closed after erasure"
    );
    assert_nowhere(&s, RAW_USER, "after erasure");
    assert_nowhere(&s, CANARY, "after erasure");
    // Nothing left links the user: "was this person a user?" has no answer in the data dir,
    // even with the pseudonym key.
    assert!(
        files_containing(&s.data, &key).is_empty(),
        "the erased user's key is still in {:?}",
        files_containing(&s.data, &key)
    );
    // Survives a restart the same way.
    drop(ws);
    s.kill9();
    s.restart();
    assert!(
        s.export(RAW_USER).is_none(),
        "erased user back after restart"
    );
    assert_nowhere(&s, RAW_USER, "after restart");
    assert_nowhere(&s, CANARY, "after restart");
    assert!(files_containing(&s.data, &key).is_empty());
}

#[test]
fn delete_me_erases_the_callers_own_data() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let t = s.identify("self-eraser");
    let other = s.identify("bystander");
    s.post_ok(&t, vec![custom(&eid("m"), "mine", Value::Null)]);
    s.post_ok(&other, vec![custom(&eid("o"), "theirs", Value::Null)]);
    assert!(s.export("self-eraser").is_some());

    let r = s.delete("/v1/me", None);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = s.delete("/v1/me", Some(&t));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        s.export("self-eraser").is_none(),
        "still exported after DELETE /v1/me"
    );
    assert_eq!(s.get("/v1/me", Some(&t)).status, 404);
    assert!(
        s.export("bystander").is_some(),
        "DELETE /v1/me erased someone else"
    );
}

#[test]
fn consent_decides_storage_and_personalisation() {
    let s = Server::start(Opts::with_repo_scripts(""));

    // No analytics consent (absent, false, only personalisation): nothing stored, counted.
    let t = s.identify("no-consent");
    let mut absent = page_view(&eid("n"), "/article/x");
    absent.as_object_mut().unwrap().remove("consent");
    let events = vec![
        absent,
        with_consent(page_view(&eid("n"), "/article/x"), None, None),
        with_consent(
            scroll(&eid("n"), 90.0, "/article/x"),
            Some(false),
            Some(true),
        ),
        with_consent(
            custom(&eid("n"), "x", Value::Null),
            Some(false),
            Some(false),
        ),
    ];
    let r = s.post_ok(&t, events.clone());
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["not_consented"], 4, "{r}");
    let mut ws = s.ws_connect(&t);
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ws.send_events(events);
    let ack = ws.wait_ack(&ids[3]);
    assert_eq!(ack["not_consented"], 4, "{ack}");
    ws.send_acked(vec![with_consent(
        custom(&eid("n"), "barrier", Value::Null),
        Some(false),
        None,
    )]);
    assert!(
        ws.adjusts(None).is_empty(),
        "adjusted without consent: {:?}",
        ws.seen
    );
    assert!(
        s.export("no-consent").is_none(),
        "events without analytics consent were stored"
    );
    let me = s.get("/v1/me", Some(&t));
    assert_eq!(me.status, 404, "{}", me.body);
    let metrics = s.get("/metrics", None);
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.contains("no_consent") && !l.starts_with('#')),
        "not_consented events not counted in /metrics"
    );

    // Analytics without personalisation: stored, but nothing is pushed.
    let t = s.identify("analytics-only");
    let mut ws = s.ws_connect(&t);
    let a = |e: Value| with_consent(e, Some(true), Some(false));
    let stored = vec![
        a(page_view(&eid("a"), "/article/y")),
        a(scroll(&eid("a"), 95.0, "/article/y")),
        a(at_hour(click(&eid("a"), "buy"), 10)),
    ];
    let want: Vec<String> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ws.send_acked(stored);
    // The ack of a later batch follows any push caused by the earlier one.
    ws.send_acked(vec![a(custom(&eid("a"), "barrier", Value::Null))]);
    assert!(
        ws.adjusts(None).is_empty(),
        "adjusted without personalisation consent: {:?}",
        ws.seen
    );
    let ex = s
        .export("analytics-only")
        .expect("analytics-consented events are stored");
    let got = exported_ids(&ex);
    assert_eq!(&got[..3], &want[..], "{ex}");
    assert!(
        ex["decisions"].as_array().is_none_or(|d| d.is_empty()),
        "{ex}"
    );
    // /v1/decide without personalisation → the default.
    let r = s.post_raw(
        "/v1/decide",
        Some(&t),
        json!({"slot": "offer", "candidates": ["plain", "discount"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["variant"], "plain", "{}", r.body);
    assert_eq!(r.json["decision"]["source"], "default", "{}", r.body);

    // Control: the same behaviour with both consents is personalised.
    let t = s.identify("full-consent");
    let mut ws = s.ws_connect(&t);
    ws.send_acked(vec![page_view(&eid("f"), "/article/y")]);
    ws.send_events(vec![scroll(&eid("f"), 95.0, "/article/y")]);
    assert!(
        ws.wait_adjust("offer", deadline(WAIT)).is_some(),
        "control user got no offer; seen {:?}",
        ws.seen
    );
}

/// Runs `trimtab keys …` with `env`; its status and stderr.
fn keys_cli(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut c = std::process::Command::new(bin());
    c.arg("keys").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIMTAB_") {
            c.env_remove(k);
        }
    }
    let out = c
        .envs(env.iter().copied())
        .output()
        .expect("run trimtab keys");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_master_key_wraps_the_user_keys_and_rotates() {
    let (st, old, _) = keys_cli(&["generate"], &[]);
    assert!(st.success());
    let old = old.trim().to_string();
    assert_eq!(old.len(), 64, "{old}");
    let mut s = Server::start(Opts::config("").env("TRIMTAB_MASTER_KEY", &old));
    let t = s.identify("wrapped-user");
    s.post_ok(&t, vec![custom(&eid("w"), "wrapped", json!({}))]);
    s.sigterm();
    assert!(s
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("stops")
        .success());
    assert!(
        !s.stderr().contains("no master key"),
        "warned although a key was given"
    );
    let keys = std::fs::read(s.data.join("keys.bin")).expect("keys.bin");
    assert!(keys.starts_with(b"TTKEYS02"), "keys.bin is not wrapped");

    // Without the key, or with another one, the server refuses to start, saying which.
    let (st, err) = s.run_second_instance(std::time::Duration::from_secs(30));
    assert!(!st.success());
    assert!(err.contains("TRIMTAB_MASTER_KEY"), "{err}");
    let (_, other, _) = keys_cli(&["generate"], &[]);
    let (st, err) = s.run_second_instance_with(
        &[("TRIMTAB_MASTER_KEY", other.trim())],
        std::time::Duration::from_secs(30),
    );
    assert!(!st.success());
    assert!(err.contains("another master key"), "{err}");

    // Rotation (server stopped) to a key kept in a file outside the data dir.
    let key_file = s.dir().join("master.key");
    std::fs::write(&key_file, &other).expect("key file");
    let data = s.data.display().to_string();
    let (st, _, err) = keys_cli(
        &[
            "rotate",
            "--data",
            &data,
            "--new-key-file",
            &key_file.display().to_string(),
        ],
        &[("TRIMTAB_MASTER_KEY", &old)],
    );
    assert!(st.success(), "{err}");
    assert!(err.contains("1 user keys"), "{err}");
    let (st, err) = s.run_second_instance_with(
        &[("TRIMTAB_MASTER_KEY", &old)],
        std::time::Duration::from_secs(30),
    );
    assert!(!st.success(), "the old key still opens keys.bin: {err}");
    // A key file inside the data dir is refused.
    let inside = s.data.join("master.key");
    std::fs::write(&inside, &other).expect("key file");
    let (st, err) = s.run_second_instance_with(
        &[("TRIMTAB_MASTER_KEY_FILE", &inside.display().to_string())],
        std::time::Duration::from_secs(30),
    );
    assert!(!st.success());
    assert!(err.contains("inside the data dir"), "{err}");
    std::fs::remove_file(&inside).expect("remove");
    s.env = vec![(
        "TRIMTAB_MASTER_KEY_FILE".into(),
        key_file.display().to_string(),
    )];
    s.restart();
    let user = s
        .export("wrapped-user")
        .expect("the user after the rotation");
    assert_eq!(exported_ids(&user).len(), 1, "{user}");
}

#[test]
fn without_a_master_key_the_server_warns_at_start() {
    let mut s = Server::start(Opts::config(""));
    s.sigterm();
    s.wait_exit(std::time::Duration::from_secs(30));
    assert!(s.stderr().contains("no master key"), "{}", s.stderr());
    let keys = std::fs::read(s.data.join("keys.bin")).expect("keys.bin");
    assert!(keys.starts_with(b"TTKEYS01"));
}
