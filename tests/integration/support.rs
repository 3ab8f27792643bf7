//! Test support: runs the real `trimtab` binary on a free port with a temporary data dir and
//! talks to it over real HTTP (ureq) and WebSocket (tungstenite).
//!
//! Every [`Server`] owns its own temp dir (`data/`, `scripts/`, `trimtab.toml`, `stderr.log`),
//! is killed when dropped, and prints the tail of its stderr when a test panics while it lives.
//! No helper sleeps to assert timing: everything waits on a condition with a deadline.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

pub const WRITE_KEY: &str = "wk_integration_test_write_key_0123456789";
pub const ADMIN_TOKEN: &str = "adm_integration_test_admin_token_0123456789";

/// The generous deadline used for "this must happen" waits (CI is a loaded 2-core box).
pub const WAIT: Duration = Duration::from_secs(10);

pub fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A process-unique event id with a readable prefix.
pub fn eid(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every 25 ms until it returns `Some` or `within` passes.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = deadline(within);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ───────────────────────────── events ─────────────────────────────

fn base_event(id: &str, kind: &str, props: Value) -> Value {
    json!({
        "id": id,
        "type": kind,
        "session": "sess-1",
        "ts": now_ms(),
        "props": props,
        "context": {},
        "consent": {"analytics": true, "personalization": true},
    })
}

pub fn page_view(id: &str, path: &str) -> Value {
    let mut e = base_event(id, "page_view", json!({ "path": path }));
    e["context"]["page"] = path.into();
    e
}

pub fn scroll(id: &str, depth: f64, page: &str) -> Value {
    let mut e = base_event(id, "scroll", json!({ "depth": depth }));
    e["context"]["page"] = page.into();
    e
}

pub fn hover(id: &str, target: &str, phase: &str, duration_ms: u64) -> Value {
    let mut e = base_event(
        id,
        "hover",
        json!({ "phase": phase, "duration_ms": duration_ms }),
    );
    e["target"] = target.into();
    e
}

pub fn click(id: &str, target: &str) -> Value {
    let mut e = base_event(id, "click", json!({}));
    e["target"] = target.into();
    e
}

pub fn custom(id: &str, name: &str, props: Value) -> Value {
    let mut p = props;
    if p.is_null() {
        p = json!({});
    }
    p["name"] = name.into();
    base_event(id, "custom", p)
}

/// Sets `context.hour`.
pub fn at_hour(mut e: Value, hour: u8) -> Value {
    e["context"]["hour"] = hour.into();
    e
}

/// Names the user (needed with the write key; with a token it must be the token's user).
pub fn for_user(mut e: Value, user: &str) -> Value {
    e["user"] = user.into();
    e
}

pub fn with_consent(mut e: Value, analytics: Option<bool>, personalization: Option<bool>) -> Value {
    let mut c = serde_json::Map::new();
    if let Some(a) = analytics {
        c.insert("analytics".into(), a.into());
    }
    if let Some(p) = personalization {
        c.insert("personalization".into(), p.into());
    }
    e["consent"] = Value::Object(c);
    e
}

pub fn batch(events: Vec<Value>) -> Value {
    json!({ "events": events })
}

// ───────────────────────────── HTTP ─────────────────────────────

/// An HTTP response, read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: String,
    pub json: Value,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.json["error"]["path"].as_str().unwrap_or("")
    }
}

fn agent() -> ureq::Agent {
    agent_trusting(None)
}

/// An HTTP(S) client; with `root`, it trusts that certificate (PEM) and nothing else.
pub fn agent_trusting(root: Option<&str>) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)));
    if let Some(pem) = root {
        let cert = ureq::tls::Certificate::from_pem(pem.as_bytes()).expect("a PEM certificate");
        let roots = ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![cert.to_owned()]));
        b = b.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    b.build().into()
}

/// A rustls client configuration that trusts `root` (PEM) and nothing else.
pub fn rustls_trusting(root: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots
            .add(c.expect("a PEM certificate"))
            .expect("a usable root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    let mut r = r.unwrap_or_else(|e| panic!("HTTP request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        json,
        headers,
    }
}

// ───────────────────────────── server ─────────────────────────────

/// How to start a server.
#[derive(Clone, Default)]
pub struct Opts {
    /// Content of the `--config` TOML file.
    pub config: String,
    /// Copy the repository's `scripts/*.rhai` into the scripts dir.
    pub repo_scripts: bool,
    /// Extra rule files `(name without .rhai, source)`.
    pub scripts: Vec<(String, String)>,
    /// Serve HTTPS with this (certificate PEM, key PEM): written to the temp dir as
    /// `tls/cert.pem` and `tls/key.pem` and named in the config's `[tls]`.
    pub tls: Option<(String, String)>,
    /// Extra environment of the server process (e.g. `LD_PRELOAD` for the fault tests).
    pub env: Vec<(String, String)>,
}

impl Opts {
    /// The repository's example rules and the given config.
    pub fn with_repo_scripts(config: &str) -> Opts {
        Opts {
            config: config.to_string(),
            repo_scripts: true,
            ..Opts::default()
        }
    }
    pub fn config(config: &str) -> Opts {
        Opts {
            config: config.to_string(),
            ..Opts::default()
        }
    }
    pub fn script(mut self, name: &str, source: &str) -> Opts {
        self.scripts.push((name.to_string(), source.to_string()));
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Opts {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Opts {
        self.tls = Some((cert_pem.to_string(), key_pem.to_string()));
        self
    }
}

pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub base: String,
    dir: tempfile::TempDir,
    pub data: PathBuf,
    pub scripts: PathBuf,
    pub config: PathBuf,
    stderr_path: PathBuf,
    http: ureq::Agent,
    /// The certificate (PEM) the server presents, when it serves HTTPS: the clients trust it.
    pub tls_root: Option<String>,
    /// Where the TLS files are, when it does.
    pub tls_dir: Option<PathBuf>,
    /// Extra environment of the process (from [`Opts::env`]; a test may change it before a
    /// restart).
    pub env: Vec<(String, String)>,
}

/// The simulator's binary, `trimtab-sim` (its own crate: `cargo test --workspace` builds it
/// beside the server's binary).
pub fn sim_bin() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_trimtab")).with_file_name("trimtab-sim");
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p trimtab-sim`)",
        p.display()
    );
    p
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trimtab")
}

/// A `trimtab serve` command for these dirs (env secrets set, stray TRIMTAB_* removed).
fn serve_command(data: &Path, scripts: &Path, config: &Path, stderr: fs::File) -> Command {
    let mut c = Command::new(bin());
    c.arg("serve")
        .arg("--addr")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(data)
        .arg("--scripts")
        .arg(scripts)
        .arg("--config")
        .arg(config)
        .arg("--models")
        .arg(data.with_file_name("models"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIMTAB_") {
            c.env_remove(k);
        }
    }
    c.env("TRIMTAB_WRITE_KEY", WRITE_KEY)
        .env("TRIMTAB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TRIMTAB_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    c
}

impl Server {
    pub fn start(opts: Opts) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("trimtab-it-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let scripts = dir.path().join("scripts");
        let config = dir.path().join("trimtab.toml");
        fs::create_dir_all(&scripts).expect("scripts dir");
        if opts.repo_scripts {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
            for e in fs::read_dir(&repo).expect("repo scripts dir") {
                let p = e.expect("dir entry").path();
                if p.extension().and_then(|x| x.to_str()) == Some("rhai") {
                    fs::copy(&p, scripts.join(p.file_name().expect("file name"))).expect("copy");
                }
            }
        }
        for (name, src) in &opts.scripts {
            fs::write(scripts.join(format!("{name}.rhai")), src).expect("write script");
        }
        let mut config_text = opts.config.clone();
        let tls_dir = opts.tls.as_ref().map(|(cert, key)| {
            let t = dir.path().join("tls");
            fs::create_dir_all(&t).expect("tls dir");
            fs::write(t.join("cert.pem"), cert).expect("cert");
            fs::write(t.join("key.pem"), key).expect("key");
            config_text.push_str(&format!(
                "\n[tls]\ncert = {:?}\nkey = {:?}\n",
                t.join("cert.pem"),
                t.join("key.pem")
            ));
            t
        });
        fs::write(&config, &config_text).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let mut s = Server {
            child: None,
            addr: String::new(),
            base: String::new(),
            dir,
            data,
            scripts,
            config,
            stderr_path,
            http: agent_trusting(opts.tls.as_ref().map(|(c, _)| c.as_str())),
            tls_root: opts.tls.as_ref().map(|(c, _)| c.clone()),
            tls_dir,
            env: opts.env.clone(),
        };
        s.spawn();
        s
    }

    fn stderr_file(&self) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr log file")
    }

    /// Spawns the process and waits (with a deadline) for its listening line.
    fn spawn(&mut self) {
        let mut child = serve_command(&self.data, &self.scripts, &self.config, self.stderr_file())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("spawn trimtab");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining stdout for the life of the process.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("trimtab listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let end = deadline(Duration::from_secs(30));
        let url = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(u) => break u,
                Err(_) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!(
                            "trimtab exited before listening ({st}); stderr:\n{}",
                            self.stderr()
                        );
                    }
                    if Instant::now() > end {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "trimtab did not print its listening line within 30 s; stderr:\n{}",
                            self.stderr()
                        );
                    }
                }
            }
        };
        self.addr = url
            .split_once("://")
            .map_or(url.as_str(), |(_, a)| a)
            .to_string();
        self.base = url;
        self.child = Some(child);
    }

    /// Starts the server again on the same data dir, scripts and config (after a stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this Server owns; no memory is involved.
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid());
    }

    /// Sends SIGTERM (the process keeps running until it exits by itself).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let st = poll(within, || c.try_wait().ok().flatten());
        if st.is_some() {
            self.child = None;
        }
        st
    }

    /// Everything the server(s) of this test wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Spawns another `trimtab serve` on this server's dirs and config and waits for it to
    /// exit: `(status, stderr)`. Panics if it is still running after `within`.
    pub fn run_second_instance(&self, within: Duration) -> (ExitStatus, String) {
        self.run_second_instance_with(&[], within)
    }

    /// [`Server::run_second_instance`] with extra environment.
    pub fn run_second_instance_with(
        &self,
        env: &[(&str, &str)],
        within: Duration,
    ) -> (ExitStatus, String) {
        run_to_exit_with(
            &self.data,
            &self.scripts,
            &self.config,
            &self.dir.path().join("second.log"),
            env,
            within,
        )
    }

    // ─────── HTTP helpers ───────

    /// The model registry dir (next to the data dir).
    pub fn models(&self) -> PathBuf {
        self.data.with_file_name("models")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str, bearer: Option<&str>) -> Resp {
        let mut r = self.http.get(self.url(path));
        if let Some(b) = bearer {
            r = r.header("Authorization", format!("Bearer {b}"));
        }
        finish(r.call())
    }

    pub fn delete(&self, path: &str, bearer: Option<&str>) -> Resp {
        let mut r = self.http.delete(self.url(path));
        if let Some(b) = bearer {
            r = r.header("Authorization", format!("Bearer {b}"));
        }
        finish(r.call())
    }

    pub fn post_raw(&self, path: &str, bearer: Option<&str>, body: &[u8]) -> Resp {
        let mut r = self
            .http
            .post(self.url(path))
            .content_type("application/json");
        if let Some(b) = bearer {
            r = r.header("Authorization", format!("Bearer {b}"));
        }
        finish(r.send(body))
    }

    pub fn put_raw(&self, path: &str, bearer: Option<&str>, body: &[u8]) -> Resp {
        let mut r = self.http.put(self.url(path)).content_type("text/plain");
        if let Some(b) = bearer {
            r = r.header("Authorization", format!("Bearer {b}"));
        }
        finish(r.send(body))
    }

    /// `POST /v1/identify` with the write key → the user's token.
    pub fn identify(&self, user: &str) -> String {
        let r = self.post_raw(
            "/v1/identify",
            Some(WRITE_KEY),
            json!({ "user": user }).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "identify failed: {}", r.body);
        r.json["token"]
            .as_str()
            .expect("token in identify response")
            .to_string()
    }

    /// `POST /v1/events` with a token or the write key.
    pub fn post_events(&self, auth: &str, body: &Value) -> Resp {
        self.post_raw("/v1/events", Some(auth), body.to_string().as_bytes())
    }

    /// Posts and asserts 202; returns the body.
    pub fn post_ok(&self, auth: &str, events: Vec<Value>) -> Value {
        let r = self.post_events(auth, &batch(events));
        assert_eq!(r.status, 202, "POST /v1/events: {}", r.body);
        r.json
    }

    /// Admin export of a user; `None` on 404.
    pub fn export(&self, user: &str) -> Option<Value> {
        let r = self.get(&format!("/v1/users/{user}"), Some(ADMIN_TOKEN));
        match r.status {
            200 => Some(r.json),
            404 => None,
            s => panic!("export of {user}: unexpected {s}: {}", r.body),
        }
    }

    /// `GET /v1/rules` (admin) → the rules array.
    pub fn rules(&self) -> Vec<Value> {
        let r = self.get("/v1/rules", Some(ADMIN_TOKEN));
        assert_eq!(r.status, 200, "GET /v1/rules: {}", r.body);
        r.json["rules"].as_array().cloned().unwrap_or_default()
    }

    pub fn rule(&self, name: &str) -> Option<Value> {
        self.rules().into_iter().find(|r| r["name"] == name)
    }

    // ─────── WebSocket helpers ───────

    /// Opens `/v1/ws` without authenticating (optionally with an Origin header).
    pub fn ws_open(&self, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let scheme = if self.tls_root.is_some() { "wss" } else { "ws" };
        let mut req = format!("{scheme}://{}/v1/ws", self.addr)
            .into_client_request()
            .expect("ws request");
        if let Some(o) = origin {
            req.headers_mut()
                .insert("Origin", o.parse().expect("origin header value"));
        }
        let stream = TcpStream::connect(&self.addr).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let connector = self
            .tls_root
            .as_deref()
            .map(|root| tungstenite::Connector::Rustls(rustls_trusting(root)));
        match tungstenite::client_tls_with_config(req, stream, None, connector) {
            Ok((ws, _)) => Ok(Ws {
                ws,
                seen: Vec::new(),
            }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("WebSocket handshake interrupted")
            }
        }
    }

    /// Opens `/v1/ws`, authenticates with `token` and waits for `{"type":"ready"}`.
    pub fn ws_connect(&self, token: &str) -> Ws {
        let mut ws = self.ws_open(None).expect("WebSocket handshake");
        ws.send_json(&json!({"type": "auth", "token": token}));
        let r = ws.recv_json_until(deadline(WAIT), |m| {
            m["type"] == "ready" || m["type"] == "error"
        });
        match r {
            Some(m) if m["type"] == "ready" => ws,
            other => panic!("WebSocket auth failed: {other:?}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "──── trimtab stderr (last 60 lines, {}) ────\n{}\n────",
                self.stderr_path.display(),
                tail.join("\n")
            );
        }
    }
}

/// Runs `trimtab serve` on the given dirs until it exits by itself: `(status, stderr)`.
/// Panics if it starts listening instead (or is still running after `within`).
pub fn run_to_exit(
    data: &Path,
    scripts: &Path,
    config: &Path,
    log: &Path,
    within: Duration,
) -> (ExitStatus, String) {
    run_to_exit_with(data, scripts, config, log, &[], within)
}

/// [`run_to_exit`] with extra environment.
pub fn run_to_exit_with(
    data: &Path,
    scripts: &Path,
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
    within: Duration,
) -> (ExitStatus, String) {
    let f = fs::File::create(log).expect("log file");
    let mut child = serve_command(data, scripts, config, f)
        .envs(env.iter().copied())
        .spawn()
        .expect("spawn trimtab");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut out = Vec::new();
    let st = poll(within, || {
        while let Ok(line) = rx.try_recv() {
            out.push(line);
        }
        if out.iter().any(|l| l.starts_with("trimtab listening on")) {
            return Some(None);
        }
        child.try_wait().ok().flatten().map(Some)
    });
    let Some(Some(st)) = st else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "trimtab kept running (expected it to exit with an error); stdout: {:?}\nstderr: {}",
            out,
            fs::read_to_string(log).unwrap_or_default()
        );
    };
    (st, fs::read_to_string(log).unwrap_or_default())
}

// ───────────────────────────── WebSocket ─────────────────────────────

pub struct Ws {
    pub ws: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    /// Every JSON message received so far, in order.
    pub seen: Vec<Value>,
}

/// What reading one message gave.
pub enum Got {
    Json(Value),
    Close(Option<u16>),
    /// Nothing within the poll interval.
    Nothing,
    /// The connection is gone (closed or reset).
    Gone(String),
}

impl Ws {
    pub fn send_json(&mut self, v: &Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .expect("WebSocket send");
    }

    pub fn send_text(&mut self, s: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(s.to_string()))
    }

    pub fn send_events(&mut self, events: Vec<Value>) {
        self.send_json(&json!({"type": "events", "events": events}));
    }

    /// Reads one message, waiting at most `max_wait`.
    pub fn next(&mut self, max_wait: Duration) -> Got {
        let wait = max_wait.max(Duration::from_millis(1));
        let tcp = match self.ws.get_ref() {
            tungstenite::stream::MaybeTlsStream::Plain(t) => t,
            tungstenite::stream::MaybeTlsStream::Rustls(t) => t.get_ref(),
            _ => panic!("a stream kind the tests do not open"),
        };
        let _ = tcp.set_read_timeout(Some(wait));
        match self.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent non-JSON text {t:?}: {e}"));
                self.seen.push(v.clone());
                Got::Json(v)
            }
            Ok(Message::Close(f)) => Got::Close(f.map(|f| u16::from(f.code))),
            Ok(_) => Got::Nothing,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Got::Nothing
            }
            Err(e) => Got::Gone(e.to_string()),
        }
    }

    /// Reads until a JSON message satisfies `pred` (returned) or the deadline passes / the
    /// socket closes (`None`). Every message read is recorded in `seen`.
    pub fn recv_json_until(
        &mut self,
        until: Instant,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next(left.min(Duration::from_millis(200))) {
                Got::Json(v) if pred(&v) => return Some(v),
                Got::Json(_) | Got::Nothing => {}
                Got::Close(_) | Got::Gone(_) => return None,
            }
        }
    }

    /// Waits for the ack naming `id`; panics with what was seen otherwise.
    pub fn wait_ack(&mut self, id: &str) -> Value {
        let r = self.recv_json_until(deadline(WAIT), |m| {
            m["type"] == "ack"
                && m["ids"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == id))
        });
        r.unwrap_or_else(|| panic!("no ack for {id} within {WAIT:?}; seen: {:?}", self.seen))
    }

    /// Sends a batch and waits for the ack of its last event.
    pub fn send_acked(&mut self, events: Vec<Value>) -> Value {
        let last = events
            .last()
            .and_then(|e| e["id"].as_str())
            .expect("an event with an id")
            .to_string();
        self.send_events(events);
        self.wait_ack(&last)
    }

    /// Waits for an `adjust` message of `slot`.
    pub fn wait_adjust(&mut self, slot: &str, until: Instant) -> Option<Value> {
        self.recv_json_until(until, |m| m["type"] == "adjust" && m["slot"] == slot)
    }

    /// Adjust messages seen so far (optionally only of `slot`).
    pub fn adjusts(&self, slot: Option<&str>) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|m| m["type"] == "adjust" && slot.is_none_or(|s| m["slot"] == s))
            .cloned()
            .collect()
    }

    /// Reads until the server's close frame: its code (or `None` if the connection ended
    /// without one, or nothing came before the deadline — see `Err`).
    pub fn wait_close(&mut self, until: Instant) -> Result<Option<u16>, String> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no close before the deadline; seen: {:?}",
                    self.seen
                ));
            }
            match self.next(left.min(Duration::from_millis(200))) {
                Got::Close(code) => {
                    // Let tungstenite answer the close (completes the handshake).
                    let _ = self.ws.flush();
                    return Ok(code);
                }
                Got::Gone(e) => return Err(format!("connection ended without a close frame: {e}")),
                _ => {}
            }
        }
    }
}

/// Event ids stored for a user, from an export.
pub fn exported_ids(export: &Value) -> Vec<String> {
    export["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Starts a server with this config file's text and waits for it to exit (a config or start
/// error): its status and stderr.
pub fn run_with_config_file(config: &str) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("trimtab.toml");
    fs::write(&cfg, config).expect("config");
    let scripts = dir.path().join("scripts");
    fs::create_dir_all(&scripts).expect("scripts");
    run_to_exit(
        &dir.path().join("data"),
        &scripts,
        &cfg,
        &dir.path().join("stderr.log"),
        Duration::from_secs(15),
    )
}
