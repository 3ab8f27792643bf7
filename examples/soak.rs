//! `soak`: kill -9 cycles under load against a reference model of acknowledged events.
//!
//! One data dir, `--cycles` times: start `trimtab serve` on it, wait until it is ready (the
//! recovery of the previous crash), load it with `--clients` HTTP clients posting batches of
//! `--batch` events (each for one of `--users` users, each with a unique id), and `kill -9` it
//! after a random time between `--min-ms` and `--max-ms` — mid-commit, mid-checkpoint,
//! mid-index, whatever it was doing; a share of the cycles (`--early`) kills it as soon as it
//! listens, while it may still be replaying. The clients keep the model: an event is
//! *acknowledged* when a 202 answer covered it; a batch whose answer did not come (the server
//! died, 429, 503) is *pending* and is sent again, the same bytes, after the restart — as the
//! SDK does.
//!
//! At the end the server starts once more, every pending batch is sent until acknowledged, and
//! every user is exported: each acknowledged event must be there exactly once (0 lost, 0
//! duplicates), nothing else may be, and the user's state must count exactly those events.
//! Then a SIGTERM must stop it cleanly (exit 0). Exit status 1 on any violation.
//!
//! ```text
//! cargo build --release --bin trimtab --example soak
//! target/release/examples/soak --cycles 1000 --server-bin target/release/trimtab
//! ```
//! `.ci/run` runs a few dozen cycles on the debug build.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const ADMIN: &str = "soak-admin-token-0123456789";
const WRITE: &str = "soak-write-key-0123456789ab";

#[derive(Parser, Debug)]
#[command(about = "kill -9 cycles under load; checks every acknowledged event survives once")]
struct Args {
    /// Crash cycles.
    #[arg(long, default_value_t = 30)]
    cycles: u32,
    /// The trimtab binary.
    #[arg(long, default_value = "target/release/trimtab")]
    server_bin: PathBuf,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Shortest time under load before the kill (ms).
    #[arg(long, default_value_t = 150)]
    min_ms: u64,
    /// Longest time under load before the kill (ms).
    #[arg(long, default_value_t = 1500)]
    max_ms: u64,
    /// Share of cycles killed as soon as the server listens (possibly mid-replay).
    #[arg(long, default_value_t = 0.15)]
    early: f64,
    /// Seed of the kill times and the users' choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the data dir here (default: a temp dir, removed at the end).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// A batch sent without an answer: its body (sent again as it is) and its events (user, id).
type Pending = (Vec<u8>, Vec<(usize, String)>);

/// What the clients know.
#[derive(Default)]
struct Model {
    /// Acknowledged event ids, per user.
    acked: HashMap<usize, HashSet<String>>,
    /// Every event id ever sent, per user (acknowledged or not).
    sent: HashMap<usize, HashSet<String>>,
    /// Batches whose answer did not come.
    pending: Vec<Pending>,
    resent: u64,
    batches: u64,
}

struct Server {
    child: Child,
    url: String,
}

fn user_name(u: usize) -> String {
    format!("soak-{u}")
}

fn start(bin: &Path, dir: &Path) -> Result<Server> {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--scripts")
        .arg(&scripts)
        .arg("--models")
        .arg(dir.join("models"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIMTAB_") {
            cmd.env_remove(k);
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    let mut child = cmd
        .env("TRIMTAB_ADMIN_TOKEN", ADMIN)
        .env("TRIMTAB_WRITE_KEY", WRITE)
        .env("TRIMTAB_RATE__USER_PER_MIN", "0")
        .env("TRIMTAB_RATE__IDENTIFY_PER_MIN", "0")
        .env("TRIMTAB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("trimtab listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(url) => Ok(Server { child, url }),
        Err(_) => {
            let _ = child.kill();
            let st = child.wait()?;
            bail!(
                "the server did not listen within 120 s ({st}); see {}",
                dir.join("server.log").display()
            )
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn wait_ready(a: &ureq::Agent, url: &str, within: Duration) -> Result<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(r) = a.get(format!("{url}/readyz")).call() {
            if r.status() == 200 {
                return Ok(t.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("not ready within {within:?}")
}

/// Posts `body`; `Some(())` on 202 (acknowledged), `None` when the answer did not come or the
/// server could not take it now. Any other answer ends the run (exit 2).
fn post(a: &ureq::Agent, url: &str, body: &[u8]) -> Option<()> {
    let r = a
        .post(format!("{url}/v1/events"))
        .header("Authorization", format!("Bearer {WRITE}"))
        .content_type("application/json")
        .send(body)
        .ok()?;
    match r.status().as_u16() {
        202 => Some(()),
        // Overloaded, shutting down, storage failed: not acknowledged, sent again later.
        429 | 503 => None,
        s => {
            // The tool's own events are valid: anything else is a bug (of the tool or the
            // server), not something to count around.
            let mut r = r;
            let text = r.body_mut().read_to_string().unwrap_or_default();
            eprintln!("soak: unexpected answer {s}: {text}");
            std::process::exit(2);
        }
    }
}

/// One client's loop until `stop`: first its share of the pending batches, then new ones.
fn client(
    id: usize,
    url: String,
    args: Arc<Args>,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    seq: Arc<Mutex<u64>>,
) {
    let a = agent();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(args.seed ^ (id as u64) << 32 ^ rand::random::<u64>());
    while !stop.load(Ordering::Relaxed) {
        let resend = model.lock().expect("model").pending.pop();
        let (body, evs, again) = match resend {
            Some((b, e)) => (b, e, true),
            None => {
                let mut evs = Vec::with_capacity(args.batch);
                let mut events = Vec::with_capacity(args.batch);
                for _ in 0..args.batch {
                    let u = rng.random_range(0..args.users);
                    let n = {
                        let mut s = seq.lock().expect("seq");
                        *s += 1;
                        *s
                    };
                    let eid = format!("k{n}");
                    events.push(json!({"id": eid, "type": "custom", "user": user_name(u),
                        "session": format!("s{u}"), "ts": trimtab::now_ms(),
                        "props": {"name": "soak", "n": n},
                        "consent": {"analytics": true, "personalization": true}}));
                    evs.push((u, eid));
                }
                let body = serde_json::to_vec(&json!({ "events": events })).expect("json");
                {
                    let mut m = model.lock().expect("model");
                    for (u, e) in &evs {
                        m.sent.entry(*u).or_default().insert(e.clone());
                    }
                }
                (body, evs, false)
            }
        };
        let outcome = post(&a, &url, &body);
        let mut m = model.lock().expect("model");
        m.batches += 1;
        if again {
            m.resent += 1;
        }
        match outcome {
            Some(()) => {
                for (u, e) in evs {
                    m.acked.entry(u).or_default().insert(e);
                }
            }
            None => {
                m.pending.push((body, evs));
                drop(m);
                // The server is gone or busy: do not spin.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let tmp;
    let dir = match &args.data {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("trimtab-soak-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let model = Arc::new(Mutex::new(Model::default()));
    let seq = Arc::new(Mutex::new(0u64));
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let a = agent();
    let started = Instant::now();
    let mut recovery_ms = Vec::new();
    let mut early_kills = 0;
    for cycle in 0..args.cycles {
        let mut s = start(&args.server_bin, &dir)?;
        let early = rng.random_bool(args.early.clamp(0.0, 1.0));
        if early {
            early_kills += 1;
        } else {
            let r = wait_ready(&a, &s.url, Duration::from_secs(120))
                .with_context(|| format!("cycle {cycle}: after the previous crash"))?;
            recovery_ms.push(r.as_millis() as u64);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..args.clients)
            .map(|i| {
                let (url, args, model, stop, seq) = (
                    s.url.clone(),
                    args.clone(),
                    model.clone(),
                    stop.clone(),
                    seq.clone(),
                );
                std::thread::spawn(move || client(i, url, args, model, stop, seq))
            })
            .collect();
        let ms = if early {
            0
        } else {
            rng.random_range(args.min_ms..=args.max_ms.max(args.min_ms))
        };
        std::thread::sleep(Duration::from_millis(ms));
        s.child.kill()?; // SIGKILL
        s.child.wait()?;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        if !args.json && (cycle + 1) % 50 == 0 {
            let m = model.lock().expect("model");
            let acked: usize = m.acked.values().map(HashSet::len).sum();
            eprintln!(
                "soak: {} cycles, {acked} events acknowledged, {} batches pending, {:.0} s",
                cycle + 1,
                m.pending.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // The last start: everything pending is sent until acknowledged, then every user checked.
    let mut s = start(&args.server_bin, &dir)?;
    wait_ready(&a, &s.url, Duration::from_secs(120)).context("the final start")?;
    let pending = std::mem::take(&mut model.lock().expect("model").pending);
    for (body, evs) in pending {
        let mut tries = 0;
        loop {
            match post(&a, &s.url, &body) {
                Some(()) => {
                    let mut m = model.lock().expect("model");
                    for (u, e) in evs {
                        m.acked.entry(u).or_default().insert(e);
                    }
                    break;
                }
                None if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                None => bail!("a pending batch was never acknowledged after the final start"),
            }
        }
    }
    let m = model.lock().expect("model");
    // A user's export holds every event it ever sent: allow it minutes, not seconds.
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let (mut lost, mut duplicates, mut unexpected, mut state_mismatch, mut checked) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    for u in 0..args.users {
        let want = m.acked.get(&u).cloned().unwrap_or_default();
        let sent = m.sent.get(&u).cloned().unwrap_or_default();
        let mut r = a
            .get(format!("{}/v1/users/{}", s.url, user_name(u)))
            .header("Authorization", format!("Bearer {ADMIN}"))
            .call()?;
        let status = r.status().as_u16();
        let export: Value = if status == 200 {
            // A user's export holds every event: far past ureq's default 10 MiB read limit.
            serde_json::from_str(
                &r.body_mut()
                    .with_config()
                    .limit(u64::MAX)
                    .read_to_string()?,
            )?
        } else if status == 404 {
            json!({"events": [], "state": {"events": 0}})
        } else {
            bail!("export of {} answered {status}", user_name(u));
        };
        let mut seen: HashMap<String, u32> = HashMap::new();
        for e in export["events"].as_array().into_iter().flatten() {
            if let Some(id) = e["id"].as_str() {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
        for id in &want {
            checked += 1;
            if !seen.contains_key(id) {
                lost += 1;
                if examples.len() < 10 {
                    examples.push(format!("lost {id} of {}", user_name(u)));
                }
            }
        }
        for (id, n) in &seen {
            if *n > 1 {
                duplicates += u64::from(*n - 1);
                if examples.len() < 10 {
                    examples.push(format!("{id} of {} stored {n} times", user_name(u)));
                }
            }
            if !sent.contains(id) {
                unexpected += 1;
            }
        }
        // The state counts each stored event once: no effect applied twice or lost.
        if export["state"]["events"].as_u64() != Some(seen.len() as u64) {
            state_mismatch += 1;
            if examples.len() < 10 {
                examples.push(format!(
                    "{}: state counts {} events, {} stored",
                    user_name(u),
                    export["state"]["events"],
                    seen.len()
                ));
            }
        }
    }
    // A clean stop after all that.
    // SAFETY: kill(2) on the pid of the child this process started and has not reaped.
    unsafe {
        libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let clean = s.child.wait()?.success();
    let elapsed = started.elapsed().as_secs_f64();
    let ok = checked > 0
        && lost == 0
        && duplicates == 0
        && unexpected == 0
        && state_mismatch == 0
        && clean;
    let out = json!({
        "cycles": args.cycles, "early_kills": early_kills, "acknowledged": checked,
        "batches": m.batches, "resent": m.resent, "lost": lost, "duplicates": duplicates,
        "unexpected": unexpected, "state_mismatches": state_mismatch, "clean_stop": clean,
        "recovery_ms": {"p50": percentile(&mut recovery_ms, 0.5),
            "p99": percentile(&mut recovery_ms, 0.99), "max": recovery_ms.iter().max()},
        "seconds": elapsed, "examples": examples, "ok": ok,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "soak: {} kill -9 cycles ({early_kills} as soon as it listened) in {elapsed:.0} s: \
             {checked} events acknowledged over {} batches ({} resent after a crash); \
             lost {lost}, duplicates {duplicates}, unexpected {unexpected}, state mismatches \
             {state_mismatch}; clean final stop: {clean}; ready after a crash in p50 {} ms, \
             p99 {} ms",
            args.cycles, m.batches, m.resent, out["recovery_ms"]["p50"], out["recovery_ms"]["p99"]
        );
        for e in &examples {
            println!("  {e}");
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
