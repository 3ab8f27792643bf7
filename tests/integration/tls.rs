//! HTTPS and WSS with a self-signed certificate made here (rcgen), through real TLS clients that
//! trust exactly that certificate: the API and a WebSocket session work over TLS, plain HTTP
//! does not, and the certificate is reloaded on SIGHUP and when its files change, while a pair
//! that does not load keeps the previous one serving.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a self-signed certificate");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// Whether a client that trusts only `cert` gets an answer from the server now.
fn served_with(s: &Server, cert: &str) -> bool {
    agent_trusting(Some(cert))
        .get(s.url("/readyz"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

/// Replaces a file the way deploy tools do: write aside, then rename over it.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn https_and_wss_serve_with_the_configured_certificate() {
    let (cert, key) = self_signed();
    let s = Server::start(Opts::with_repo_scripts("").tls(&cert, &key));
    assert!(s.base.starts_with("https://"), "{}", s.base);
    assert_eq!(s.get("/readyz", None).status, 200);
    // The API over HTTPS.
    let token = s.identify("tls-user");
    let r = s.post_ok(&token, vec![custom(&eid("t"), "over-tls", json!({}))]);
    assert_eq!(r["accepted"], 1, "{r}");
    // A WebSocket session over WSS: events acknowledged, the scroll rule's offer pushed.
    let mut ws = s.ws_connect(&token);
    let id = eid("w");
    ws.send_json(&json!({"type": "events", "events": [
        page_view(&eid("p"), "/article"), scroll(&id, 80.0, "/article")
    ]}));
    ws.recv_json_until(deadline(WAIT), |m| m["type"] == "ack")
        .expect("an ack over WSS");
    // A client that does not trust the certificate, and plain HTTP, get nothing.
    let (other, _) = self_signed();
    assert!(!served_with(&s, &other));
    let plain = format!("http://{}/readyz", s.addr);
    let answer = agent_trusting(None).get(&plain).call();
    assert!(
        answer.map_or(true, |r| r.status() != 200),
        "plain HTTP answered on the TLS port"
    );
}

#[test]
fn the_certificate_reloads_on_sighup_and_on_file_change_and_a_bad_pair_is_refused() {
    let (a, a_key) = self_signed();
    let s = Server::start(Opts::with_repo_scripts("").tls(&a, &a_key));
    let dir = s.tls_dir.clone().unwrap();
    assert!(served_with(&s, &a));
    // New files; SIGHUP (the watcher may be first: either way B is served within the wait).
    let (b, b_key) = self_signed();
    replace(&dir.join("key.pem"), &b_key);
    replace(&dir.join("cert.pem"), &b);
    s.signal(libc::SIGHUP);
    assert!(
        poll(WAIT, || served_with(&s, &b).then_some(())).is_some(),
        "certificate B is not served; stderr:\n{}",
        s.stderr()
    );
    assert!(!served_with(&s, &a), "the old certificate is still served");
    // A change of the files alone, no signal: the watcher reloads.
    let (c, c_key) = self_signed();
    replace(&dir.join("key.pem"), &c_key);
    replace(&dir.join("cert.pem"), &c);
    assert!(
        poll(WAIT, || served_with(&s, &c).then_some(())).is_some(),
        "certificate C is not served after its files changed; stderr:\n{}",
        s.stderr()
    );
    // A key that does not belong to the certificate: refused, C keeps serving.
    let (_, wrong_key) = self_signed();
    replace(&dir.join("key.pem"), &wrong_key);
    s.signal(libc::SIGHUP);
    assert!(
        poll(WAIT, || s.stderr().contains("not reloaded").then_some(())).is_some(),
        "the bad pair was not reported; stderr:\n{}",
        s.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(served_with(&s, &c), "a bad pair replaced the good one");
}

#[test]
fn a_missing_or_mismatched_certificate_stops_the_start_with_a_clear_error() {
    let (cert, _) = self_signed();
    let (_, other_key) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &other_key).unwrap();
    let cfg = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    let (st, stderr) = run_with_config_file(&cfg);
    assert!(!st.success());
    assert!(stderr.contains("does not match"), "{stderr}");
    let cfg = "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n";
    let (st, stderr) = run_with_config_file(cfg);
    assert!(!st.success());
    assert!(
        stderr.contains("tls.cert /nonexistent/cert.pem"),
        "{stderr}"
    );
    let (st, stderr) = run_with_config_file("[tls]\ncert = \"/x.pem\"\n");
    assert_eq!(st.code(), Some(2));
    assert!(
        stderr.contains("tls.cert and tls.key go together"),
        "{stderr}"
    );
}
