//! `loadgen`: whole-system load tool for `trimtab serve`, with its own baseline in the same run.
//!
//! What it measures. It opens `--sessions` WebSocket sessions (one user each: `POST /v1/identify`,
//! then `GET /v1/ws` and the `auth` handshake) and sends `custom` events named `bench` at a fixed
//! total `--rate`, `--batch` events per message. A rule it installs (`bench.rhai`) makes every event
//! yield one adjustment whose `params.seq` names the event. For each event it measures
//! - send→ack latency: until the server's `ack` (the event is durable), and
//! - event→adjustment latency: until the `adjust` for that event arrives on the same socket,
//!
//! and counts acks/s ("accepted events/s"), adjustments/s, `overloaded` answers (retried later
//! with the same id, at most `--max-retries` times), other errors, and what never came back.
//!
//! Open loop, no coordinated omission: each session sends on its own fixed schedule (period
//! `sessions × batch / rate`, jittered start) whether or not earlier events were answered, and
//! latency is measured from the *scheduled* send time, so a stalled server shows up as latency
//! rather than as a quietly lower offered rate. Events scheduled during `--warmup` are sent but
//! not measured; throughput counts answers received inside the measured window.
//!
//! Baseline. In the same process, first, the identical load is run against a bare actix-web +
//! actix-ws server (own thread, own actix System, default worker count) that parses each
//! `events` message and replies with the same `adjust` and `ack` messages, with no durability and
//! no rules. The report gives trimtab's throughput and latency percentiles as ratios to it.
//! Then trimtab is spawned (fresh temp data/scripts dirs, frequency caps off, random secrets),
//! loaded, and stopped with SIGTERM. Each part is bounded: setup ≤ 30 s, then
//! warmup + duration + `--drain` (+1 s grace) even if a server stops answering. Loopback only.
//!
//! Client: awc on one actix (current-thread tokio) runtime per `--client-threads` thread; every
//! session has independent reader and writer futures so a slow reader never blocks sends.
//! Latencies go into HDR histograms (µs, 3 significant digits). CPU use of the server and of the
//! client threads over the measured window is read from /proc and printed as % of one core.
//!
//! HTTP ingest mode (`--mode http`; the default is `--mode ws`, everything above). `--clients`
//! keep-alive HTTP/1.1 connections (one blocking std thread each) post `POST /v1/events` batches
//! of `--batch` events (default 100) with the write key, closed loop: each client sends its next
//! request as soon as the previous answer arrived, for `--warmup` + `--duration` seconds. Event
//! `pos` goes to user `pos % --users` (round-robin, so one batch covers `batch` different users
//! and the first `users` events create the users) and is that user's next event of an SDK-like
//! visit: page_view, scrolls of rising depth, hover start/end on a target, click, custom; each
//! with a unique id, `context` (page, device, hour) and full consent. trimtab runs the bench rule
//! and the three example rules of `scripts/`, which read that state. Two passes go against the
//! same trimtab: `new` on its fresh data dir (every user is new at first), then `known` with the
//! same users, already stored. Because a pass goes through the users at its own speed, the report
//! says which share of the acknowledged events went to users with nothing stored yet, and notes
//! a pass that did not reach every user.
//!
//! It measures acknowledged events/s (`accepted + duplicates` of the 202 answers received inside
//! the window), requests/s (answers of any status), request latency (write → complete answer, of
//! requests sent inside the window; HDR, µs), 429 answers (the same bytes, so the same ids, are
//! resent after `Retry-After`, capped by `--max-retry-wait-ms`, at most `--max-retries` times;
//! dedup keeps the count honest), other errors, and server and client CPU. Each request body is
//! built while the previous request is being answered, so building stays off the latency path.
//! The baseline is the same bare actix-web server (own thread and System, default workers)
//! answering `POST /v1/events` by parsing the body into a `serde_json::Value`, counting `events`
//! and replying `202 {"accepted": n, "duplicates": 0, "not_consented": 0}`: no durability, no
//! check of the credential beyond reading the header. It gets one pass of the identical load
//! (it keeps no state), first; both trimtab passes are given as ratios to it.
//!
//! Run (from the repo root):
//! ```text
//! cargo build --release && cargo run --release --example loadgen -- --sessions 200 --rate 2000 --duration 15
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --write-key KEY --skip-baseline
//! cargo run --release --example loadgen -- --mode http --clients 8 --batch 100 --users 40000 --duration 15
//! ```
//! `--json` prints one machine-readable JSON object instead of the table.

use std::{
    cell::{Cell, RefCell},
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, VecDeque},
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    rc::Rc,
    sync::{mpsc, Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use anyhow::{bail, Context, Result};
use awc::{http::Uri, ws};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The rule that turns every bench event into one adjustment naming it. The variant differs per
/// event because trimtab sends nothing when a slot already shows the requested variant.
const BENCH_RULE: &str = r#"// installed by examples/loadgen.rs
const ON = ["custom"];
if event.type == "custom" && event.props.name == "bench" {
    adjust("bench", "v" + event.props.seq, #{ seq: event.props.seq });
}
"#;
/// How long identify + connect + auth may take for all sessions of a run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time after the drain deadline before sessions are dropped unconditionally.
const GRACE: Duration = Duration::from_secs(1);
/// Sessions doing identify/connect at the same time, per client thread.
const SETUP_CONCURRENCY: usize = 64;
/// How often due retries are looked for between the pacer's ticks.
const RETRY_POLL: Duration = Duration::from_millis(10);
/// Histogram upper bound: 10 minutes in µs (longer values are clamped).
const HIST_MAX_US: u64 = 600_000_000;

/// `--server-set KEY=VALUE`.
fn parse_setting(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE (a dotted setting such as pipeline.shard_queue=4096), got {s:?}"
        )),
    }
}

/// What is driven: WebSocket sessions, or HTTP ingest (`POST /v1/events`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// WebSocket sessions sending `custom` bench events at a fixed rate (open loop).
    Ws,
    /// Keep-alive HTTP/1.1 clients posting event batches (closed loop), in two passes.
    Http,
}

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    about = "Load trimtab over WebSockets (fixed event rate) or HTTP ingest (closed-loop clients) and compare with a bare actix baseline in the same run",
    after_help = "Modes:\n  \
      ws    --sessions WebSocket sessions send `custom` events at --rate events/s in total, --batch (default 1)\n        \
            per message; reports ack and adjustment latency against a bare actix-ws echo.\n  \
      http  --clients keep-alive HTTP/1.1 connections post --batch (default 100) events per `POST /v1/events`,\n        \
            each as soon as the previous answer arrived, over --users users round-robin (an SDK-like mix of\n        \
            page_view, scroll, hover, click, custom). Two passes on one trimtab: `new` on a fresh data dir, then\n        \
            `known` with the same, already stored users; both against a bare actix-web JSON-parsing baseline.\n        \
            429 answers are retried with the same batch after Retry-After (capped by --max-retry-wait-ms).\n\n\
      Examples:\n  \
      cargo run --release --example loadgen -- --sessions 1000 --rate 10000 --duration 15\n  \
      cargo run --release --example loadgen -- --mode http --clients 8 --batch 100 --users 40000 --duration 15"
)]
struct Args {
    /// `ws`: WebSocket sessions at a fixed rate; `http`: closed-loop HTTP ingest, passes `new` and `known`.
    #[arg(long, value_enum, default_value_t = Mode::Ws)]
    mode: Mode,
    /// trimtab binary to spawn (ignored with --url).
    #[arg(long, default_value = "target/release/trimtab")]
    server_bin: PathBuf,
    /// A setting of the spawned server, `KEY=VALUE` with the dotted key of `trimtab config`
    /// (e.g. `pipeline.shard_queue=4096`); repeatable. The spawned server sees no `TRIMTAB_*`
    /// variable of the caller's environment, so this is the way to change one (ignored with
    /// --url).
    #[arg(long = "server-set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    server_set: Vec<(String, String)>,
    /// Drive an already-running server instead of spawning one (it must have the bench rule);
    /// several comma-separated URLs (a cluster's nodes) share the clients or sessions.
    #[arg(long)]
    url: Option<String>,
    /// Write key of the server given with --url.
    #[arg(long, env = "TRIMTAB_WRITE_KEY", hide_env_values = true)]
    #[serde(skip)]
    write_key: Option<String>,
    /// ws: concurrent WebSocket sessions (one user each).
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// ws: total events per second offered, over all sessions.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait for outstanding answers after the last send.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Events per `events` message (ws, default 1) or per `POST /v1/events` request (http, default 100).
    #[arg(long)]
    batch: Option<usize>,
    /// Resends of an event (ws) or a batch (http) answered `overloaded` / 429 before giving it up.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// ws: client threads (each one actix runtime holding a share of the sessions).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// http: keep-alive HTTP/1.1 client connections (one blocking thread each), closed loop.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// http: distinct users, taken round-robin (one batch covers `batch` different users).
    #[arg(long, default_value_t = 40_000)]
    users: usize,
    /// http: longest wait, in ms, honoured from a 429's `Retry-After` before resending the batch.
    #[arg(long, default_value_t = 1000)]
    max_retry_wait_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Do not run the bare actix-ws baseline.
    #[arg(long)]
    skip_baseline: bool,
    /// Run the baseline only (development aid).
    #[arg(long, hide = true)]
    skip_target: bool,
    /// Leave Nagle's algorithm on in the client (browsers turn it off; for comparison only).
    #[arg(long, hide = true)]
    client_nagle: bool,
    /// Only serve the baseline echo, printing trimtab's listening line, until SIGTERM
    /// (lets the tool's own spawn/stop path be tested without trimtab).
    #[arg(long, hide = true)]
    #[serde(skip)]
    serve_echo: bool,
}

impl Args {
    /// Events per message (ws) or request (http), with the mode's default.
    fn batch(&self) -> usize {
        self.batch.unwrap_or(match self.mode {
            Mode::Ws => 1,
            Mode::Http => 100,
        })
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.serve_echo {
        return baseline::serve_standalone();
    }
    args.batch = Some(args.batch());
    validate(&args)?;
    let machine = Machine::probe();
    if args.mode == Mode::Http {
        return http::run(&args, machine);
    }
    if !args.json {
        print_header(&machine, &args);
    }

    let baseline = if args.skip_baseline {
        None
    } else {
        let server = baseline::start().context("start baseline server")?;
        note(
            &args,
            &format!("baseline: bare actix-ws echo on {}", server.url),
        );
        let res = run_load(
            &args,
            "baseline",
            &server.url,
            "baseline-key",
            CpuOf::SelfMinusClient,
        );
        server.stop();
        Some(res?)
    };

    let target = if args.skip_target {
        None
    } else if let Some(url) = &args.url {
        let key = args
            .write_key
            .clone()
            .context("--url needs --write-key (or TRIMTAB_WRITE_KEY)")?;
        eprintln!(
            "warning: driving an existing server at {url}: it must run this rule, with \
             [delivery] cap_per_session = 0 and cap_per_user = 0, or adjustments will be missing:\n{BENCH_RULE}"
        );
        Some(run_load(
            &args,
            "trimtab",
            url.trim_end_matches('/'),
            &key,
            CpuOf::None,
        )?)
    } else {
        let server = target::spawn(&args.server_bin, &args.server_set, &[], "")?;
        note(
            &args,
            &format!(
                "trimtab: spawned {} (pid {}) on {}, data in {}",
                args.server_bin.display(),
                server.pid(),
                server.url,
                server.dir.path().display()
            ),
        );
        let before = http::scrape(&server.url);
        let res = run_load(
            &args,
            "trimtab",
            &server.url,
            &server.write_key,
            CpuOf::Pid(server.pid()),
        );
        if let (Some(a), Some(b)) = (before, http::scrape(&server.url)) {
            let c = http::ServerCounters::between(&a, &b);
            note(
                &args,
                &format!("trimtab /metrics over the run: {}", c.summary()),
            );
        }
        let stopped = server.stop();
        note(&args, &format!("trimtab: {stopped}"));
        Some(res?)
    };

    let report = Report::new(machine, args.clone(), baseline, target);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.batch() == 0 || args.batch() > 1000 {
        bail!("--batch must be in 1..=1000");
    }
    match args.mode {
        Mode::Ws => {
            if args.sessions == 0 || args.sessions > 100_000 {
                bail!("--sessions must be in 1..=100000");
            }
            if !(args.rate > 0.0 && args.rate.is_finite()) {
                bail!("--rate must be > 0");
            }
            if args.client_threads == 0 || args.client_threads > args.sessions {
                bail!("--client-threads must be in 1..=sessions");
            }
        }
        Mode::Http => {
            if args.clients == 0 || args.clients > 1024 {
                bail!("--clients must be in 1..=1024");
            }
            if args.users == 0 || args.users > 100_000_000 {
                bail!("--users must be in 1..=100000000");
            }
            if args.max_retry_wait_ms > 60_000 {
                bail!("--max-retry-wait-ms must be at most 60000");
            }
        }
    }
    for (name, v) in [
        ("duration", args.duration),
        ("warmup", args.warmup),
        ("drain", args.drain),
    ] {
        if !(0.0..=86_400.0).contains(&v) {
            bail!("--{name} must be between 0 and 86400 seconds");
        }
    }
    if args.duration <= 0.0 {
        bail!("--duration must be > 0");
    }
    if let Some(url) = &args.url {
        let host = url.strip_prefix("http://").unwrap_or("");
        if !(host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"))
        {
            bail!("--url must be http:// on loopback (127.0.0.0/8, localhost or [::1])");
        }
    }
    Ok(())
}

fn note(args: &Args, msg: &str) {
    if !args.json {
        println!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// The load run.

/// Everything a client thread needs to know about a run (shared, read-only).
struct Plan {
    base_url: String,
    /// The nodes' socket URLs (several with `--url a,b,c`: session `i` uses node `i % n`).
    ws_urls: Vec<String>,
    write_key: String,
    /// Random prefix of event ids and user names, so runs against one server never collide.
    run_id: String,
    batch: usize,
    period: Duration,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    max_retries: u32,
    nodelay: bool,
}

/// Absolute instants of one run, fixed once every session is connected.
#[derive(Clone, Copy, Debug)]
struct Timeline {
    t0: Instant,
    window_start: Instant,
    window_end: Instant,
    drain_end: Instant,
}

impl Timeline {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }
}

/// Whose CPU time is "the server" for a run.
#[derive(Clone, Copy)]
enum CpuOf {
    /// A child process.
    Pid(u32),
    /// This process minus the client threads (the in-process baseline).
    SelfMinusClient,
    /// Not measurable (remote server).
    None,
}

type TickTx = tokio::sync::mpsc::UnboundedSender<Instant>;

struct ThreadReady {
    tid: Option<u32>,
    ticks: Vec<TickTx>,
    failures: Vec<String>,
}

fn run_load(
    args: &Args,
    name: &str,
    base_url: &str,
    write_key: &str,
    cpu_of: CpuOf,
) -> Result<RunResult> {
    let ws_urls = base_url
        .split(',')
        .map(|u| {
            format!(
                "{}/v1/ws",
                u.trim_end_matches('/').replacen("http://", "ws://", 1)
            )
        })
        .collect();
    let plan = Arc::new(Plan {
        base_url: base_url.split(',').next().unwrap_or(base_url).to_string(),
        ws_urls,
        write_key: write_key.to_string(),
        run_id: format!("{:08x}", rand::rng().random::<u32>()),
        batch: args.batch(),
        period: Duration::from_secs_f64(args.sessions as f64 * args.batch() as f64 / args.rate),
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        drain: Duration::from_secs_f64(args.drain),
        max_retries: args.max_retries,
        nodelay: !args.client_nagle,
    });

    let (ready_tx, ready_rx) = mpsc::channel::<ThreadReady>();
    let (done_tx, done_rx) = mpsc::channel::<Stats>();
    let mut starts = Vec::new();
    let sampled = Arc::new(Gate::default());
    for t in 0..args.client_threads {
        let idxs: Vec<usize> = (t..args.sessions).step_by(args.client_threads).collect();
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<Timeline>();
        starts.push(start_tx);
        let (plan, ready_tx, done_tx) = (plan.clone(), ready_tx.clone(), done_tx.clone());
        let gate = sampled.clone();
        thread::Builder::new()
            .name(format!("loadgen-client-{t}"))
            .spawn(move || {
                let (stats, drain_end) = client_thread(plan, idxs, ready_tx, start_rx);
                if let Some(end) = drain_end {
                    gate.wait_until(end + GRACE);
                }
                let _ = done_tx.send(stats);
            })
            .context("spawn client thread")?;
    }
    drop((ready_tx, done_tx));

    // Setup: every thread reports how many of its sessions are connected and authenticated.
    let setup_deadline = Instant::now() + SETUP_TIMEOUT + Duration::from_secs(2);
    let (mut ticks, mut failures, mut tids) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.client_threads {
        let left = setup_deadline.saturating_duration_since(Instant::now());
        let ready = ready_rx
            .recv_timeout(left)
            .context("client threads did not finish setup in time")?;
        ticks.extend(ready.ticks);
        failures.extend(ready.failures);
        tids.extend(ready.tid);
    }
    let connected = ticks.len();
    if connected == 0 {
        bail!(
            "{name}: no session could connect; first error: {}",
            failures.first().map(String::as_str).unwrap_or("unknown")
        );
    }
    if !failures.is_empty() {
        eprintln!(
            "{name}: {} sessions failed setup; first: {}",
            failures.len(),
            failures[0]
        );
    }

    let t0 = Instant::now() + Duration::from_millis(100);
    let tl = Timeline {
        t0,
        window_start: t0 + plan.warmup,
        window_end: t0 + plan.warmup + plan.duration,
        drain_end: t0 + plan.warmup + plan.duration + plan.drain,
    };
    for s in starts {
        let _ = s.send(tl);
    }
    let (tid_tx, tid_rx) = mpsc::channel();
    let period = plan.period;
    let gate = sampled.clone();
    let pacer = thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            let _ = tid_tx.send(current_tid());
            pacer(tl, period, ticks, &gate);
        })
        .context("spawn pacer thread")?;
    if let Ok(Some(tid)) = tid_rx.recv_timeout(Duration::from_secs(1)) {
        tids.push(tid);
    }

    // CPU use over the measured window.
    sleep_until(tl.window_start);
    let cpu0 = CpuSample::take(cpu_of, &tids);
    sleep_until(tl.window_end);
    let cpu1 = CpuSample::take(cpu_of, &tids);
    sampled.open();
    let secs = plan.duration.as_secs_f64();
    let (cpu_server_pct, cpu_client_pct) = CpuSample::pct(&cpu0, &cpu1, secs);

    let _ = pacer.join();
    let mut total = Stats::new();
    let hard_end = tl.drain_end + GRACE + Duration::from_secs(2);
    let mut finished = 0;
    while finished < args.client_threads {
        let left = hard_end.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(s) => {
                total.merge(&s);
                finished += 1;
            }
            Err(_) => {
                eprintln!(
                    "{name}: {} client threads did not stop in time; partial results",
                    args.client_threads - finished
                );
                break;
            }
        }
    }

    Ok(RunResult::new(
        name,
        args,
        connected,
        failures,
        &total,
        secs,
        cpu_server_pct,
        cpu_client_pct,
    ))
}

/// The clock of the open loop, on its own thread so that send times are exact to ~0.1 ms (an
/// async runtime's timer rounds every deadline up to the next millisecond, which would add a
/// client-side bias of up to 1 ms to every latency). Session `i` sends at `t0 + jitter_i + k·period`
/// for every such instant before the end of the window; a late pacer sends at once with the
/// scheduled instant, so lateness counts as latency. Dropping the senders ends the schedule.
fn pacer(tl: Timeline, period: Duration, ticks: Vec<TickTx>, sampled: &Gate) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack (50 µs → 1 µs).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let mut rng = rand::rng();
    let span = period.as_nanos().max(1) as u64;
    let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = (0..ticks.len())
        .map(|i| Reverse((tl.t0 + Duration::from_nanos(rng.random_range(0..span)), i)))
        .collect();
    while let Some(Reverse((t, i))) = heap.pop() {
        if t >= tl.window_end {
            continue;
        }
        sleep_until(t);
        if ticks[i].send(t).is_ok() {
            heap.push(Reverse((t + period, i)));
        }
    }
    drop(ticks);
    // Stay alive, and so countable, until the final CPU sample.
    sampled.wait_until(tl.drain_end + GRACE);
}

/// Keeps threads alive until the final CPU sample has been taken (an exited thread's CPU time
/// can no longer be read), or until a deadline.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        if let Ok(mut open) = self.open.lock() {
            *open = true;
        }
        self.cv.notify_all();
    }

    fn wait_until(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(open) = self.open.lock() {
            let _ = self.cv.wait_timeout_while(open, left, |open| !*open);
        }
    }
}

fn sleep_until(t: Instant) {
    let d = t.saturating_duration_since(Instant::now());
    if !d.is_zero() {
        thread::sleep(d);
    }
}

/// One client thread: its own actix System driving a share of the sessions.
fn client_thread(
    plan: Arc<Plan>,
    idxs: Vec<usize>,
    ready_tx: mpsc::Sender<ThreadReady>,
    start_rx: tokio::sync::oneshot::Receiver<Timeline>,
) -> (Stats, Option<Instant>) {
    let sys = actix_rt::System::new();
    sys.block_on(async move {
        let client = awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .connector(tcp_connector(plan.nodelay))
                    .limit(0),
            )
            .timeout(Duration::from_secs(10))
            .finish();
        let stats = Rc::new(RefCell::new(Stats::new()));
        let (tl_tx, tl_rx) = tokio::sync::watch::channel::<Option<Timeline>>(None);
        let (setup_tx, mut setup_rx) =
            tokio::sync::mpsc::unbounded_channel::<Result<TickTx, String>>();
        let sem = Rc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
        let n = idxs.len();
        let mut handles = Vec::with_capacity(n);
        for idx in idxs {
            let ctx = SessionCtx {
                idx,
                plan: plan.clone(),
                stats: stats.clone(),
            };
            handles.push(actix_rt::spawn(session_task(
                ctx,
                client.clone(),
                sem.clone(),
                setup_tx.clone(),
                tl_rx.clone(),
            )));
        }
        drop(setup_tx);
        let (mut ticks, mut failures) = (Vec::new(), Vec::new());
        for _ in 0..n {
            match setup_rx.recv().await {
                Some(Ok(t)) => ticks.push(t),
                Some(Err(e)) => failures.push(e),
                None => break,
            }
        }
        let _ = ready_tx.send(ThreadReady {
            tid: current_tid(),
            ticks,
            failures,
        });
        // A dropped start sender (the main thread gave up) ends the waiting sessions.
        let tl = start_rx.await.ok();
        let _ = tl_tx.send(tl);
        drop(tl_tx);
        for h in handles {
            let _ = h.await;
        }
        (stats.replace(Stats::new()), tl.map(|t| t.drain_end))
    })
}

/// awc's TCP connect step, with TCP_NODELAY set as browsers do: with Nagle's algorithm on, a
/// small message written while the previous one is unacknowledged waits for the peer's delayed
/// ACK (up to 40 ms), which the server only sends early if it answers at once.
fn tcp_connector(
    nodelay: bool,
) -> impl actix_service::Service<
    ConnectInfo<Uri>,
    Response = Connection<Uri, actix_rt::net::TcpStream>,
    Error = ConnectError,
> + Clone {
    actix_service::fn_service(move |req: ConnectInfo<Uri>| async move {
        let stream = actix_rt::net::TcpStream::connect((req.hostname(), req.port()))
            .await
            .map_err(ConnectError::Io)?;
        stream.set_nodelay(nodelay).map_err(ConnectError::Io)?;
        Ok(Connection::new(req.request().clone(), stream))
    })
}

struct SessionCtx {
    idx: usize,
    plan: Arc<Plan>,
    stats: Rc<RefCell<Stats>>,
}

#[derive(Debug)]
struct Pending {
    sched: Instant,
    measured: bool,
    acked: bool,
    adjusted: bool,
    attempts: u32,
}

#[derive(Default)]
struct SessionState {
    pending: HashMap<u64, Pending>,
    /// Events answered `overloaded`, to resend once due: (due, seq).
    retries: VecDeque<(Instant, u64)>,
}

#[derive(Deserialize)]
struct IdentifyResponse {
    token: String,
}

/// Identify, connect, authenticate; then wait for the common start and run the schedule.
async fn session_task(
    ctx: SessionCtx,
    client: awc::Client,
    sem: Rc<tokio::sync::Semaphore>,
    setup_tx: tokio::sync::mpsc::UnboundedSender<Result<TickTx, String>>,
    mut tl_rx: tokio::sync::watch::Receiver<Option<Timeline>>,
) {
    let plan = ctx.plan.clone();
    let user = format!("lg-{}-{}", plan.run_id, ctx.idx);
    let setup = async {
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        let mut resp = client
            .post(format!("{}/v1/identify", plan.base_url))
            .insert_header(("Authorization", format!("Bearer {}", plan.write_key)))
            .send_json(&serde_json::json!({ "user": user }))
            .await
            .map_err(|e| format!("identify: {e}"))?;
        if !resp.status().is_success() {
            let body = resp.body().await.unwrap_or_default();
            return Err(format!(
                "identify: HTTP {}: {}",
                resp.status(),
                String::from_utf8_lossy(&body)
            ));
        }
        let id: IdentifyResponse = resp
            .json()
            .await
            .map_err(|e| format!("identify body: {e}"))?;
        let (_, mut framed) = client
            .ws(plan.ws_urls[ctx.idx % plan.ws_urls.len()].as_str())
            .max_frame_size(1 << 20)
            .connect()
            .await
            .map_err(|e| format!("ws connect: {e}"))?;
        let auth = serde_json::json!({ "type": "auth", "token": id.token }).to_string();
        framed
            .send(ws::Message::Text(auth.into()))
            .await
            .map_err(|e| format!("ws send auth: {e}"))?;
        loop {
            match framed.next().await {
                Some(Ok(ws::Frame::Text(b))) => {
                    let m: Incoming =
                        serde_json::from_slice(&b).map_err(|e| format!("auth reply: {e}"))?;
                    match m.kind {
                        "ready" => break,
                        "error" => {
                            return Err(format!("auth refused: {}", String::from_utf8_lossy(&b)))
                        }
                        _ => {}
                    }
                }
                Some(Ok(ws::Frame::Ping(p))) => {
                    let _ = framed.send(ws::Message::Pong(p)).await;
                }
                Some(Ok(ws::Frame::Close(r))) => return Err(format!("closed during auth: {r:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("ws during auth: {e}")),
                None => return Err("connection ended during auth".to_string()),
            }
        }
        Ok(framed)
    };
    let framed = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            let _ = setup_tx.send(Err(format!("session {}: {e}", ctx.idx)));
            return;
        }
        Err(_) => {
            let _ = setup_tx.send(Err(format!("session {}: setup timed out", ctx.idx)));
            return;
        }
    };
    let (tick_tx, tick_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let _ = setup_tx.send(Ok(tick_tx));
    drop(setup_tx);
    let tl = match tl_rx.wait_for(Option::is_some).await {
        Ok(t) => *t,
        Err(_) => None,
    };
    let Some(tl) = tl else { return };

    let (sink, stream) = framed.split();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ws::Message>();
    let state = Rc::new(RefCell::new(SessionState::default()));
    let sender_done = Rc::new(Cell::new(false));
    let work = futures_util::future::join3(
        writer(sink, rx),
        sender(&ctx, tl, tick_rx, &state, tx.clone(), &sender_done),
        receiver(&ctx, tl, &state, stream, tx, &sender_done),
    );
    let hard_end = tokio::time::Instant::from_std(tl.drain_end + GRACE);
    tokio::select! {
        _ = work => {}
        _ = tokio::time::sleep_until(hard_end) => {}
    }
    let st = state.borrow();
    let mut stats = ctx.stats.borrow_mut();
    for p in st.pending.values().filter(|p| p.measured) {
        stats.unacked_end += u64::from(!p.acked);
        stats.unadjusted_end += u64::from(!p.adjusted);
    }
}

/// Owns the socket's write half: batches whatever is queued into one flush; sends Close at the end.
async fn writer<S>(mut sink: S, mut rx: tokio::sync::mpsc::UnboundedReceiver<ws::Message>)
where
    S: futures_util::Sink<ws::Message> + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.send(ws::Message::Close(None)).await;
    let _ = sink.close().await;
}

/// Event sequence number: session index in the high bits, so an adjust for another session's
/// event would not match (and it stays below 2^53 for JSON and within Rhai's i64).
fn seq_of(idx: usize, k: u64) -> u64 {
    ((idx as u64) << 32) | (k & 0xffff_ffff)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn push_event(buf: &mut String, plan: &Plan, idx: usize, seq: u64, ts: u64, first: bool) {
    if !first {
        buf.push(',');
    }
    // Writing to a String cannot fail.
    let _ = write!(
        buf,
        r#"{{"id":"{}-{seq}","type":"custom","session":"s-{idx}","ts":{ts},"props":{{"name":"bench","seq":{seq}}},"consent":{{"analytics":true,"personalization":true}},"context":{{"device":"desktop"}}}}"#,
        plan.run_id
    );
}

/// Appends due retries to `buf`; returns how many were added.
fn push_due_retries(
    st: &mut SessionState,
    buf: &mut String,
    plan: &Plan,
    idx: usize,
    ts: u64,
    mut first: bool,
) -> u64 {
    let now = Instant::now();
    let mut n = 0;
    while let Some(&(due, seq)) = st.retries.front() {
        if due > now {
            break;
        }
        st.retries.pop_front();
        push_event(buf, plan, idx, seq, ts, first);
        first = false;
        n += 1;
    }
    n
}

/// Sends one message of `batch` events (plus due retries) per tick of the pacer; between ticks,
/// and after the last one until the drain deadline, resends due retries on their own.
async fn sender(
    ctx: &SessionCtx,
    tl: Timeline,
    mut ticks: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    state: &RefCell<SessionState>,
    tx: tokio::sync::mpsc::UnboundedSender<ws::Message>,
    done: &Cell<bool>,
) {
    let plan = &ctx.plan;
    let cap = 256 * plan.batch + 64;
    let mut k: u64 = 0;
    loop {
        let has_retries = !state.borrow().retries.is_empty();
        let sched = tokio::select! {
            t = ticks.recv() => match t {
                Some(t) => t,
                None => break,
            },
            _ = tokio::time::sleep(RETRY_POLL), if has_retries => {
                if !send_retries(ctx, state, &tx) {
                    done.set(true);
                    return;
                }
                continue;
            }
        };
        let measured = tl.in_window(sched);
        let ts = unix_ms();
        let mut buf = String::with_capacity(cap);
        buf.push_str(r#"{"type":"events","events":["#);
        let retried = {
            let mut st = state.borrow_mut();
            for j in 0..plan.batch {
                let seq = seq_of(ctx.idx, k);
                k += 1;
                push_event(&mut buf, plan, ctx.idx, seq, ts, j == 0);
                st.pending.insert(
                    seq,
                    Pending {
                        sched,
                        measured,
                        acked: false,
                        adjusted: false,
                        attempts: 0,
                    },
                );
            }
            push_due_retries(&mut st, &mut buf, plan, ctx.idx, ts, false)
        };
        buf.push_str("]}");
        {
            let mut s = ctx.stats.borrow_mut();
            s.sent_total += plan.batch as u64;
            s.send_lag.saturating_record(micros(Instant::now() - sched));
            s.retried += retried;
            if measured {
                s.sent_window += plan.batch as u64;
            }
        }
        if tx.send(ws::Message::Text(buf.into())).is_err() {
            done.set(true);
            return;
        }
    }
    // Drain: keep resending due retries while anything may still be answered `overloaded`.
    while Instant::now() < tl.drain_end {
        {
            let st = state.borrow();
            if st.retries.is_empty() && st.pending.values().all(|p| p.acked) {
                break;
            }
        }
        tokio::time::sleep(RETRY_POLL).await;
        if !send_retries(ctx, state, &tx) {
            break;
        }
    }
    done.set(true);
}

/// Sends the due retries (if any) as one message; false once the socket writer is gone.
fn send_retries(
    ctx: &SessionCtx,
    state: &RefCell<SessionState>,
    tx: &tokio::sync::mpsc::UnboundedSender<ws::Message>,
) -> bool {
    let mut buf = String::from(r#"{"type":"events","events":["#);
    let n = push_due_retries(
        &mut state.borrow_mut(),
        &mut buf,
        &ctx.plan,
        ctx.idx,
        unix_ms(),
        true,
    );
    if n == 0 {
        return true;
    }
    buf.push_str("]}");
    ctx.stats.borrow_mut().retried += n;
    tx.send(ws::Message::Text(buf.into())).is_ok()
}

/// A server message; only the fields the client looks at.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    slot: Option<String>,
    #[serde(default)]
    params: Option<AdjustParams>,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct AdjustParams {
    seq: Option<SeqValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SeqValue {
    Num(u64),
    Str(String),
}

impl SeqValue {
    fn get(&self) -> Option<u64> {
        match self {
            SeqValue::Num(n) => Some(*n),
            SeqValue::Str(s) => s.parse().ok(),
        }
    }
}

fn seq_of_id(id: &str) -> Option<u64> {
    id.rsplit_once('-').and_then(|(_, s)| s.parse().ok())
}

async fn receiver<S>(
    ctx: &SessionCtx,
    tl: Timeline,
    state: &RefCell<SessionState>,
    mut stream: S,
    tx: tokio::sync::mpsc::UnboundedSender<ws::Message>,
    sender_done: &Cell<bool>,
) where
    S: futures_util::Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>> + Unpin,
{
    let mut check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(ws::Frame::Text(b))) => on_text(ctx, tl, state, &b),
                Some(Ok(ws::Frame::Ping(p))) => {
                    let _ = tx.send(ws::Message::Pong(p));
                }
                Some(Ok(ws::Frame::Close(_))) | None => {
                    if !sender_done.get() || !state.borrow().pending.is_empty() {
                        ctx.stats.borrow_mut().closed_early += 1;
                    }
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let mut s = ctx.stats.borrow_mut();
                    s.closed_early += 1;
                    *s.error_codes.entry(format!("ws: {e}")).or_default() += 1;
                    return;
                }
            },
            _ = check.tick() => {}
        }
        if (sender_done.get() && state.borrow().pending.is_empty())
            || Instant::now() >= tl.drain_end
        {
            return;
        }
    }
}

fn on_text(ctx: &SessionCtx, tl: Timeline, state: &RefCell<SessionState>, bytes: &[u8]) {
    let now = Instant::now();
    let in_window = tl.in_window(now);
    let mut stats = ctx.stats.borrow_mut();
    let msg: Incoming = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(_) => {
            stats.errors += 1;
            *stats
                .error_codes
                .entry("unparseable server message".into())
                .or_default() += 1;
            return;
        }
    };
    let mut st = state.borrow_mut();
    match msg.kind {
        "ack" => {
            for id in &msg.ids {
                let Some(seq) = seq_of_id(id) else {
                    stats.unmatched += 1;
                    continue;
                };
                match st.pending.get_mut(&seq) {
                    Some(p) if !p.acked => {
                        p.acked = true;
                        if p.measured {
                            stats.acked_measured += 1;
                            stats.ack.saturating_record(micros(now - p.sched));
                        }
                        if in_window {
                            stats.acked_in_window += 1;
                        }
                        if p.adjusted {
                            st.pending.remove(&seq);
                        }
                    }
                    _ => stats.unmatched += 1,
                }
            }
        }
        "adjust" => {
            if msg.slot.as_deref() != Some("bench") {
                stats.other_adjusts += 1;
                return;
            }
            let Some(seq) = msg
                .params
                .as_ref()
                .and_then(|p| p.seq.as_ref())
                .and_then(SeqValue::get)
            else {
                stats.unmatched += 1;
                return;
            };
            match st.pending.get_mut(&seq) {
                Some(p) if !p.adjusted => {
                    p.adjusted = true;
                    if p.measured {
                        stats.adjusted_measured += 1;
                        stats.adjust.saturating_record(micros(now - p.sched));
                    }
                    if in_window {
                        stats.adjusted_in_window += 1;
                    }
                    if p.acked {
                        st.pending.remove(&seq);
                    }
                }
                _ => stats.unmatched += 1,
            }
        }
        "error" => {
            let code = msg.code.unwrap_or_default();
            if code == "overloaded" {
                if msg.ids.is_empty() {
                    stats.overloaded += 1;
                }
                for seq in msg.ids.iter().filter_map(|id| seq_of_id(id)) {
                    stats.overloaded += 1;
                    let Some(p) = st.pending.get_mut(&seq) else {
                        continue;
                    };
                    if p.acked {
                        continue;
                    }
                    if p.attempts < ctx.plan.max_retries {
                        p.attempts += 1;
                        let backoff = Duration::from_millis(50 * u64::from(p.attempts));
                        st.retries.push_back((now + backoff, seq));
                    } else {
                        stats.gave_up += 1;
                        st.pending.remove(&seq);
                    }
                }
            } else {
                stats.errors += 1;
                *stats.error_codes.entry(code).or_default() += 1;
                for seq in msg.ids.iter().filter_map(|id| seq_of_id(id)) {
                    st.pending.remove(&seq);
                }
            }
        }
        _ => {}
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn new_hist() -> Histogram<u64> {
    // Constant, valid bounds (1 ≤ low, high ≥ 2·low, 3 significant figures).
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Counters and histograms of one client thread (merged over threads at the end).
struct Stats {
    sent_total: u64,
    sent_window: u64,
    retried: u64,
    acked_in_window: u64,
    adjusted_in_window: u64,
    acked_measured: u64,
    adjusted_measured: u64,
    overloaded: u64,
    gave_up: u64,
    errors: u64,
    error_codes: BTreeMap<String, u64>,
    unmatched: u64,
    other_adjusts: u64,
    unacked_end: u64,
    unadjusted_end: u64,
    closed_early: u64,
    ack: Histogram<u64>,
    adjust: Histogram<u64>,
    /// Scheduled send time → message handed to the socket writer (client health).
    send_lag: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            sent_total: 0,
            sent_window: 0,
            retried: 0,
            acked_in_window: 0,
            adjusted_in_window: 0,
            acked_measured: 0,
            adjusted_measured: 0,
            overloaded: 0,
            gave_up: 0,
            errors: 0,
            error_codes: BTreeMap::new(),
            unmatched: 0,
            other_adjusts: 0,
            unacked_end: 0,
            unadjusted_end: 0,
            closed_early: 0,
            ack: new_hist(),
            adjust: new_hist(),
            send_lag: new_hist(),
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.sent_total += o.sent_total;
        self.sent_window += o.sent_window;
        self.retried += o.retried;
        self.acked_in_window += o.acked_in_window;
        self.adjusted_in_window += o.adjusted_in_window;
        self.acked_measured += o.acked_measured;
        self.adjusted_measured += o.adjusted_measured;
        self.overloaded += o.overloaded;
        self.gave_up += o.gave_up;
        self.errors += o.errors;
        for (k, v) in &o.error_codes {
            *self.error_codes.entry(k.clone()).or_default() += v;
        }
        self.unmatched += o.unmatched;
        self.other_adjusts += o.other_adjusts;
        self.unacked_end += o.unacked_end;
        self.unadjusted_end += o.unadjusted_end;
        self.closed_early += o.closed_early;
        // Same constant bounds on both sides, so adding cannot go out of range.
        self.ack.add(&o.ack).expect("histograms share bounds");
        self.adjust.add(&o.adjust).expect("histograms share bounds");
        self.send_lag
            .add(&o.send_lag)
            .expect("histograms share bounds");
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc.

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant; it has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a whole process, in seconds.
fn proc_cpu(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// CPU time of one thread of this process, in seconds (schedstat: ns on CPU).
fn thread_cpu(tid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

struct CpuSample {
    server: Option<f64>,
    client: Option<f64>,
}

impl CpuSample {
    fn take(of: CpuOf, tids: &[u32]) -> Self {
        let client = tids.iter().map(|t| thread_cpu(*t)).sum::<Option<f64>>();
        let server = match of {
            CpuOf::Pid(p) => proc_cpu(Some(p)),
            CpuOf::SelfMinusClient => proc_cpu(None).zip(client).map(|(all, c)| all - c),
            CpuOf::None => None,
        };
        CpuSample { server, client }
    }

    /// (server, client) CPU over the interval as % of one core.
    fn pct(a: &CpuSample, b: &CpuSample, secs: f64) -> (Option<f64>, Option<f64>) {
        let d = |x: Option<f64>, y: Option<f64>| {
            x.zip(y).map(|(x, y)| ((y - x) / secs * 100.0).max(0.0))
        };
        (d(a.server, b.server), d(a.client, b.client))
    }
}

// ---------------------------------------------------------------------------------------------
// The bare actix-ws baseline.

mod baseline {
    use std::{sync::mpsc, thread, time::Duration};

    use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
    use anyhow::{Context, Result};
    use futures_util::StreamExt;
    use serde::{Deserialize, Serialize};

    /// Largest request body the baseline reads (trimtab's own limit is configurable).
    const MAX_BODY: usize = 64 << 20;

    pub struct Baseline {
        pub url: String,
        handle: ServerHandle,
        thread: thread::JoinHandle<()>,
    }

    /// Starts the echo server on 127.0.0.1:0 on its own thread and actix System.
    pub fn start() -> Result<Baseline> {
        let (tx, rx) = mpsc::channel::<std::io::Result<(std::net::SocketAddr, ServerHandle)>>();
        let thread = thread::Builder::new()
            .name("baseline-server".into())
            .spawn(move || {
                let sys = actix_rt::System::new();
                sys.block_on(async move {
                    let bound = HttpServer::new(|| {
                        App::new()
                            .app_data(web::PayloadConfig::new(MAX_BODY))
                            .route("/v1/identify", web::post().to(identify))
                            .route("/v1/ws", web::get().to(ws))
                            .route("/v1/events", web::post().to(events))
                    })
                    .disable_signals()
                    .bind(("127.0.0.1", 0));
                    let server = match bound {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let addr = server.addrs()[0];
                    let server = server.run();
                    let _ = tx.send(Ok((addr, server.handle())));
                    if let Err(e) = server.await {
                        eprintln!("baseline server: {e}");
                    }
                });
            })
            .context("spawn baseline thread")?;
        let (addr, handle) = rx
            .recv_timeout(Duration::from_secs(10))
            .context("baseline server did not start")?
            .context("bind baseline server")?;
        Ok(Baseline {
            url: format!("http://{addr}"),
            handle,
            thread,
        })
    }

    /// The echo server alone, on the main thread, stopped gracefully by SIGTERM/SIGINT.
    pub fn serve_standalone() -> Result<()> {
        actix_rt::System::new().block_on(async {
            let server = HttpServer::new(|| {
                App::new()
                    .app_data(web::PayloadConfig::new(MAX_BODY))
                    .route("/v1/identify", web::post().to(identify))
                    .route("/v1/ws", web::get().to(ws))
                    .route("/v1/events", web::post().to(events))
            })
            .bind(("127.0.0.1", 0))?;
            println!("trimtab listening on http://{}", server.addrs()[0]);
            server.run().await?;
            Ok(())
        })
    }

    impl Baseline {
        pub fn stop(self) {
            actix_rt::System::new().block_on(self.handle.stop(true));
            let _ = self.thread.join();
        }
    }

    #[derive(Deserialize)]
    struct IdentifyReq {
        user: String,
    }

    async fn identify(body: web::Json<IdentifyReq>) -> HttpResponse {
        let token = format!("baseline-{}", body.user);
        HttpResponse::Ok().json(serde_json::json!({ "user": body.user, "token": token }))
    }

    #[derive(Deserialize)]
    struct InMsg {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        events: Vec<InEvent>,
    }

    /// Parsed the way a server would, so the baseline pays for the parse too.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct InEvent {
        id: String,
        #[serde(rename = "type")]
        kind: String,
        session: String,
        ts: i64,
        #[serde(default)]
        props: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        context: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        consent: serde_json::Map<String, serde_json::Value>,
    }

    #[derive(Serialize)]
    struct Adjust<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        slot: &'static str,
        variant: &'static str,
        params: AdjustParams,
        decision: Decision<'a>,
    }

    #[derive(Serialize)]
    struct AdjustParams {
        seq: String,
    }

    #[derive(Serialize)]
    struct Decision<'a> {
        id: String,
        source: &'static str,
        experiment: Option<&'a str>,
        arm: Option<&'a str>,
        propensity: f64,
    }

    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        ids: Vec<&'a str>,
    }

    /// The replies to one client message: `ready` for auth; one `adjust` per event then an `ack`.
    fn replies(text: &str) -> Vec<String> {
        let Ok(msg) = serde_json::from_str::<InMsg>(text) else {
            return vec![
                r#"{"type":"error","code":"bad_request","message":"unparseable"}"#.to_string(),
            ];
        };
        match msg.kind.as_str() {
            "auth" => vec![r#"{"type":"ready"}"#.to_string()],
            "events" => {
                let mut out = Vec::with_capacity(msg.events.len() + 1);
                for e in &msg.events {
                    let seq = match e.props.get("seq") {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => continue,
                    };
                    let a = Adjust {
                        kind: "adjust",
                        slot: "bench",
                        variant: "v",
                        params: AdjustParams { seq },
                        decision: Decision {
                            id: format!("d-{}", e.id),
                            source: "rule",
                            experiment: None,
                            arm: None,
                            propensity: 1.0,
                        },
                    };
                    out.extend(serde_json::to_string(&a).ok());
                }
                let ack = Ack {
                    kind: "ack",
                    ids: msg.events.iter().map(|e| e.id.as_str()).collect(),
                };
                out.extend(serde_json::to_string(&ack).ok());
                out
            }
            _ => Vec::new(),
        }
    }

    /// `POST /v1/events` for the http mode: reads the credential header, parses the body into a
    /// `serde_json::Value`, counts `events` and answers 202 as trimtab does, with no durability.
    async fn events(req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        if bearer.is_none_or(str::is_empty) {
            return HttpResponse::Unauthorized().json(serde_json::json!({
                "error": {"code": "unauthorized", "message": "no Bearer credential"}
            }));
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return HttpResponse::BadRequest().json(serde_json::json!({
                "error": {"code": "malformed_json", "message": "body is not valid JSON"}
            }));
        };
        let n = v
            .get("events")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        HttpResponse::Accepted()
            .json(serde_json::json!({"accepted": n, "duplicates": 0, "not_consented": 0}))
    }

    async fn ws(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
        let (resp, mut session, stream) = actix_ws::handle(&req, body)?;
        let mut stream = stream.max_frame_size(1 << 20);
        actix_web::rt::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let sent = match msg {
                    actix_ws::Message::Text(t) => {
                        let mut ok = true;
                        for r in replies(&t) {
                            ok = ok && session.text(r).await.is_ok();
                        }
                        ok
                    }
                    actix_ws::Message::Ping(p) => session.pong(&p).await.is_ok(),
                    actix_ws::Message::Close(reason) => {
                        let _ = session.close(reason).await;
                        return;
                    }
                    _ => true,
                };
                if !sent {
                    return;
                }
            }
            let _ = session.close(None).await;
        });
        Ok(resp)
    }
}

// ---------------------------------------------------------------------------------------------
// The spawned trimtab server.

mod target {
    use super::*;

    const CONFIG: &str = "# written by examples/loadgen.rs: no frequency caps for the bench slot\n\
        [delivery]\ncap_per_session = 0\ncap_per_user = 0\n";

    pub struct Server {
        child: Option<Child>,
        pub dir: tempfile::TempDir,
        pub url: String,
        pub write_key: String,
        log: PathBuf,
    }

    /// Whether `bin` has the setting `key` (`trimtab config --json` lists every one).
    fn knows_setting(bin: &Path, key: &str) -> bool {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TRIMTAB_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["config", "--json"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("\"key\":\"{key}\"")))
            .unwrap_or(false)
    }

    fn random_hex() -> String {
        let b: [u8; 24] = rand::rng().random();
        b.iter().fold(String::with_capacity(48), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
    }

    /// The environment variable that sets the dotted config key `key` (`pipeline.shard_queue`
    /// → `TRIMTAB_PIPELINE__SHARD_QUEUE`).
    pub fn setting_var(key: &str) -> String {
        format!("TRIMTAB_{}", key.to_ascii_uppercase().replace('.', "__"))
    }

    /// Spawns `trimtab serve` with the bench rule plus `extra_rules` (file name, source), the
    /// no-caps config plus `extra_config` (TOML appended as is) and the settings `sets`
    /// (dotted key, value; each must be one the binary knows).
    pub fn spawn(
        bin: &Path,
        sets: &[(String, String)],
        extra_rules: &[(&str, &str)],
        extra_config: &str,
    ) -> Result<Server> {
        if !bin.is_file() {
            bail!(
                "server binary {} not found: run `cargo build --release` first, or pass --server-bin or --url",
                bin.display()
            );
        }
        if let Some((k, _)) = sets.iter().find(|(k, _)| !knows_setting(bin, k)) {
            bail!(
                "--server-set {k}: {} has no such setting (`trimtab config` lists them)",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("trimtab-loadgen-")
            .tempdir()?;
        let (data, scripts) = (dir.path().join("data"), dir.path().join("scripts"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&scripts)?;
        std::fs::write(scripts.join("bench.rhai"), BENCH_RULE)?;
        for (name, src) in extra_rules {
            std::fs::write(scripts.join(name), src)?;
        }
        let config = dir.path().join("trimtab.toml");
        std::fs::write(&config, format!("{CONFIG}{extra_config}"))?;
        let log = dir.path().join("server.log");
        let write_key = random_hex();
        let mut cmd = Command::new(bin);
        // Only the settings written here: no TRIMTAB_* from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TRIMTAB_") {
                cmd.env_remove(k);
            }
        }
        // Thousands of sessions from one address: no per-address connection cap (a binary
        // from before that setting existed refuses the variable, so ask it first).
        if knows_setting(bin, "http.max_connections_per_ip") {
            cmd.env("TRIMTAB_HTTP__MAX_CONNECTIONS_PER_IP", "0");
        }
        for (k, v) in sets {
            cmd.env(setting_var(k), v);
        }
        let mut child = cmd
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .arg("--data")
            .arg(&data)
            .arg("--scripts")
            .arg(&scripts)
            .arg("--config")
            .arg(&config)
            .env("TRIMTAB_WRITE_KEY", &write_key)
            .env("TRIMTAB_ADMIN_TOKEN", random_hex())
            // Thousands of sessions get their tokens from one address in a few seconds: the
            // per-IP token limits would measure themselves, not the engine.
            .env("TRIMTAB_RATE__ANONYMOUS_PER_MIN", "0")
            .env("TRIMTAB_RATE__IDENTIFY_PER_MIN", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout is piped")?;
        let (tx, rx) = mpsc::channel::<String>();
        // Reads stdout to EOF (so the pipe never fills), reporting the listening address once.
        thread::Builder::new()
            .name("trimtab-stdout".into())
            .spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.trim().strip_prefix("trimtab listening on ") {
                        if let (Some(tx), Some(url)) = (tx.take(), rest.split_whitespace().next()) {
                            let _ = tx.send(url.trim_end_matches('/').to_string());
                        }
                    }
                }
            })?;
        let mut server = Server {
            child: Some(child),
            dir,
            url: String::new(),
            write_key,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(url) => {
                    server.url = url;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(st) = server
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!(
                            "trimtab exited during start ({st}); log:\n{}",
                            server.log_tail()
                        );
                    }
                }
                Err(_) => bail!(
                    "trimtab did not print its listening line within 30 s; log:\n{}",
                    server.log_tail()
                ),
            }
        }
        server.wait_ready();
        Ok(server)
    }

    impl Server {
        pub fn pid(&self) -> u32 {
            self.child.as_ref().map_or(0, Child::id)
        }

        fn log_tail(&self) -> String {
            let s = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }

        /// Polls `/readyz` for up to 10 s (a 404 means the server has none: go on).
        fn wait_ready(&self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match ureq::get(format!("{}/readyz", self.url)).call() {
                    Ok(_) | Err(ureq::Error::StatusCode(404)) => return,
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
            eprintln!(
                "warning: {}/readyz not ready after 10 s; going on",
                self.url
            );
        }

        /// SIGTERM, then wait up to 15 s for a graceful exit, then SIGKILL. Says what happened.
        pub fn stop(mut self) -> String {
            self.shutdown()
        }

        fn shutdown(&mut self) -> String {
            let Some(mut child) = self.child.take() else {
                return "already stopped".into();
            };
            let Ok(pid) = i32::try_from(child.id()) else {
                let _ = child.kill();
                return "killed".into();
            };
            let t = Instant::now();
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            while t.elapsed() < Duration::from_secs(15) {
                match child.try_wait() {
                    Ok(Some(st)) if st.success() => {
                        return format!("stopped by SIGTERM in {} ms", t.elapsed().as_millis())
                    }
                    Ok(Some(st)) => {
                        return format!(
                            "exited with {st} after SIGTERM; log tail:\n{}",
                            self.log_tail()
                        )
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            "did not stop within 15 s of SIGTERM: killed".into()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if self.child.is_some() {
                let _ = self.shutdown();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results and report.

#[derive(Serialize, Clone, Copy, Default)]
struct Percentiles {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Serialize)]
struct RunResult {
    name: String,
    sessions_connected: usize,
    setup_failures: usize,
    first_setup_failure: Option<String>,
    offered_events_per_s: f64,
    sent_in_window: u64,
    sent_total: u64,
    acked_per_s: f64,
    adjustments_per_s: f64,
    acked_measured: u64,
    adjusted_measured: u64,
    overloaded: u64,
    retried: u64,
    gave_up: u64,
    errors: u64,
    error_codes: BTreeMap<String, u64>,
    unmatched: u64,
    other_adjusts: u64,
    unacked_at_end: u64,
    unadjusted_at_end: u64,
    closed_early: u64,
    ack: Percentiles,
    adjust: Percentiles,
    client_send_lag: Percentiles,
    cpu_server_pct_of_core: Option<f64>,
    cpu_client_pct_of_core: Option<f64>,
}

impl RunResult {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        args: &Args,
        connected: usize,
        failures: Vec<String>,
        s: &Stats,
        secs: f64,
        cpu_server: Option<f64>,
        cpu_client: Option<f64>,
    ) -> Self {
        RunResult {
            name: name.to_string(),
            sessions_connected: connected,
            setup_failures: failures.len(),
            first_setup_failure: failures.into_iter().next(),
            offered_events_per_s: args.rate * connected as f64 / args.sessions as f64,
            sent_in_window: s.sent_window,
            sent_total: s.sent_total,
            acked_per_s: s.acked_in_window as f64 / secs,
            adjustments_per_s: s.adjusted_in_window as f64 / secs,
            acked_measured: s.acked_measured,
            adjusted_measured: s.adjusted_measured,
            overloaded: s.overloaded,
            retried: s.retried,
            gave_up: s.gave_up,
            errors: s.errors,
            error_codes: s.error_codes.clone(),
            unmatched: s.unmatched,
            other_adjusts: s.other_adjusts,
            unacked_at_end: s.unacked_end,
            unadjusted_at_end: s.unadjusted_end,
            closed_early: s.closed_early,
            ack: Percentiles::of(&s.ack),
            adjust: Percentiles::of(&s.adjust),
            client_send_lag: Percentiles::of(&s.send_lag),
            cpu_server_pct_of_core: cpu_server,
            cpu_client_pct_of_core: cpu_client,
        }
    }
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    /// 1-minute load average when the tool started (other work on the box skews results).
    loadavg_1m: f64,
    cpu_model: String,
    mem_gib: f64,
    kernel: String,
}

impl Machine {
    fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_1m: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(f64::NAN),
            cpu_model,
            mem_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

fn print_header(m: &Machine, a: &Args) {
    println!(
        "machine: {} cpus, {}, {:.1} GiB RAM, Linux {}, load average {:.2} at start",
        m.cpus, m.cpu_model, m.mem_gib, m.kernel, m.loadavg_1m
    );
    let period_ms = a.sessions as f64 * a.batch() as f64 / a.rate * 1000.0;
    println!(
        "params: sessions={} rate={}/s batch={} duration={}s warmup={}s drain={}s max-retries={} client-threads={} \
         (each session sends every {period_ms:.1} ms; baseline runs first, then trimtab)",
        a.sessions, a.rate, a.batch(), a.duration, a.warmup, a.drain, a.max_retries, a.client_threads
    );
    print_server_set(a);
}

/// The `--server-set` settings, if any, under the params line.
fn print_server_set(a: &Args) {
    if !a.server_set.is_empty() && a.url.is_none() {
        let sets: Vec<String> = a
            .server_set
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("server settings: {}", sets.join(" "));
    }
}

#[derive(Serialize)]
struct Ratios {
    acked_per_s: f64,
    adjustments_per_s: f64,
    ack_p50: f64,
    ack_p99: f64,
    ack_p999: f64,
    adjust_p50: f64,
    adjust_p99: f64,
    adjust_p999: f64,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    params: Args,
    baseline: Option<RunResult>,
    target: Option<RunResult>,
    /// target / baseline.
    ratios: Option<Ratios>,
}

fn ratio(t: f64, b: f64) -> f64 {
    if b > 0.0 {
        t / b
    } else {
        f64::NAN
    }
}

impl Report {
    fn new(
        machine: Machine,
        params: Args,
        baseline: Option<RunResult>,
        target: Option<RunResult>,
    ) -> Self {
        let ratios = baseline.as_ref().zip(target.as_ref()).map(|(b, t)| Ratios {
            acked_per_s: ratio(t.acked_per_s, b.acked_per_s),
            adjustments_per_s: ratio(t.adjustments_per_s, b.adjustments_per_s),
            ack_p50: ratio(t.ack.p50_ms, b.ack.p50_ms),
            ack_p99: ratio(t.ack.p99_ms, b.ack.p99_ms),
            ack_p999: ratio(t.ack.p999_ms, b.ack.p999_ms),
            adjust_p50: ratio(t.adjust.p50_ms, b.adjust.p50_ms),
            adjust_p99: ratio(t.adjust.p99_ms, b.adjust.p99_ms),
            adjust_p999: ratio(t.adjust.p999_ms, b.adjust.p999_ms),
        });
        Report {
            machine,
            params,
            baseline,
            target,
            ratios,
        }
    }

    fn print(&self) {
        let runs: Vec<&RunResult> = self.baseline.iter().chain(self.target.iter()).collect();
        let mut header = format!("{:<28}", "");
        for r in &runs {
            let _ = write!(header, "{:>14}", r.name);
        }
        if self.ratios.is_some() {
            let _ = write!(header, "{:>14}", "trimtab/base");
        }
        println!("\n{header}");
        let row = |label: &str, f: &dyn Fn(&RunResult) -> String, ratio: Option<f64>| {
            let mut line = format!("{label:<28}");
            for r in &runs {
                let _ = write!(line, "{:>14}", f(r));
            }
            if let Some(x) = ratio {
                let _ = write!(line, "{:>13.2}x", x);
            }
            println!("{line}");
        };
        let q = &self.ratios;
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}%"));
        row(
            "sessions connected",
            &|r| r.sessions_connected.to_string(),
            None,
        );
        row(
            "offered events/s",
            &|r| format!("{:.0}", r.offered_events_per_s),
            None,
        );
        row(
            "sent (window / total)",
            &|r| format!("{}/{}", r.sent_in_window, r.sent_total),
            None,
        );
        row(
            "acked events/s",
            &|r| format!("{:.1}", r.acked_per_s),
            q.as_ref().map(|q| q.acked_per_s),
        );
        row(
            "adjustments/s",
            &|r| format!("{:.1}", r.adjustments_per_s),
            q.as_ref().map(|q| q.adjustments_per_s),
        );
        row(
            "overloaded / retried",
            &|r| format!("{}/{}", r.overloaded, r.retried),
            None,
        );
        row("gave up", &|r| r.gave_up.to_string(), None);
        row("errors", &|r| r.errors.to_string(), None);
        row(
            "unacked / unadjusted at end",
            &|r| format!("{}/{}", r.unacked_at_end, r.unadjusted_at_end),
            None,
        );
        row(
            "unmatched / closed early",
            &|r| format!("{}/{}", r.unmatched, r.closed_early),
            None,
        );
        let ms = |v: f64| format!("{v:.3}");
        row(
            "ack p50 ms",
            &|r| ms(r.ack.p50_ms),
            q.as_ref().map(|q| q.ack_p50),
        );
        row(
            "ack p99 ms",
            &|r| ms(r.ack.p99_ms),
            q.as_ref().map(|q| q.ack_p99),
        );
        row(
            "ack p99.9 ms",
            &|r| ms(r.ack.p999_ms),
            q.as_ref().map(|q| q.ack_p999),
        );
        row("ack max ms", &|r| ms(r.ack.max_ms), None);
        row(
            "adjust p50 ms",
            &|r| ms(r.adjust.p50_ms),
            q.as_ref().map(|q| q.adjust_p50),
        );
        row(
            "adjust p99 ms",
            &|r| ms(r.adjust.p99_ms),
            q.as_ref().map(|q| q.adjust_p99),
        );
        row(
            "adjust p99.9 ms",
            &|r| ms(r.adjust.p999_ms),
            q.as_ref().map(|q| q.adjust_p999),
        );
        row("adjust max ms", &|r| ms(r.adjust.max_ms), None);
        row(
            "client send lag p99/p99.9",
            &|r| {
                format!(
                    "{:.2}/{:.2}",
                    r.client_send_lag.p99_ms, r.client_send_lag.p999_ms
                )
            },
            None,
        );
        row(
            "server CPU (% of a core)",
            &|r| pct(r.cpu_server_pct_of_core),
            None,
        );
        row(
            "client CPU (% of a core)",
            &|r| pct(r.cpu_client_pct_of_core),
            None,
        );
        for r in &runs {
            if !r.error_codes.is_empty() {
                println!("{} error codes: {:?}", r.name, r.error_codes);
            }
            if r.adjusted_measured == 0 && r.acked_measured > 0 {
                println!(
                    "{}: no adjustments matched: is the bench rule loaded and are caps off?",
                    r.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP ingest mode (`--mode http`): closed-loop `POST /v1/events` clients, passes `new` and `known`.

mod http {
    use std::{
        fmt::Write as _,
        io::{self, BufRead, BufReader, Read, Write},
        net::{SocketAddr, TcpStream, ToSocketAddrs},
        sync::atomic::{AtomicU64, Ordering},
    };

    use super::*;

    /// The example rules shipped in `scripts/`, installed next to the bench rule so that the
    /// event mix below makes rules read real behavioural state (and sometimes adjust).
    const SHIPPED_RULES: [(&str, &str); 3] = [
        (
            "scroll_offer.rhai",
            include_str!("../scripts/scroll_offer.rhai"),
        ),
        (
            "hover_review.rhai",
            include_str!("../scripts/hover_review.rhai"),
        ),
        (
            "cta_by_context.rhai",
            include_str!("../scripts/cta_by_context.rhai"),
        ),
    ];
    /// trimtab's default `[limits] max_batch_events` and `max_body_bytes`.
    const DEFAULT_MAX_BATCH: usize = 100;
    const DEFAULT_MAX_BODY: usize = 256 * 1024;
    /// Events of one visit of a user, in order (see [`push_event`]).
    const VISIT: u64 = 8;
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Pause after pass `new` so its last commits are not measured as part of pass `known`.
    const SETTLE: Duration = Duration::from_secs(1);
    /// Wait after a 429 without a readable `Retry-After` (still capped by --max-retry-wait-ms).
    const DEFAULT_RETRY_WAIT: Duration = Duration::from_millis(100);
    /// Wait before reconnecting after a failed connect.
    const RECONNECT_WAIT: Duration = Duration::from_millis(100);

    /// Which users have had an event acknowledged by one server (shared by its passes).
    struct Stored {
        words: Vec<AtomicU64>,
    }

    impl Stored {
        fn new(users: u64) -> Self {
            Stored {
                words: (0..users.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            }
        }

        fn get(&self, u: u64) -> bool {
            (self.words[(u / 64) as usize].load(Ordering::Relaxed) >> (u % 64)) & 1 == 1
        }

        fn set(&self, u: u64) {
            self.words[(u / 64) as usize].fetch_or(1 << (u % 64), Ordering::Relaxed);
        }

        fn count(&self) -> u64 {
            self.words
                .iter()
                .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
                .sum()
        }
    }

    /// One pass against one server (shared, read-only except for the two shared counters).
    struct Plan {
        /// The nodes (several with `--url a,b,c`: client `i` uses node `i % n`).
        addrs: Vec<SocketAddr>,
        /// The request head up to (not including) the Content-Length value.
        head: String,
        /// Random prefix of user names (same for both passes of one server) and event ids.
        run_id: String,
        /// Distinguishes the event ids of the passes: `b`aseline, `n`ew, `k`nown.
        tag: char,
        users: u64,
        batch: usize,
        max_retries: u32,
        max_retry_wait: Duration,
        /// The next event position; event `pos` goes to user `pos % users`.
        next: AtomicU64,
        stored: Arc<Stored>,
    }

    /// One request, built before it is due (while the previous one is in flight).
    struct Batch {
        req: Vec<u8>,
        first: u64,
        n: u64,
        /// Events whose user had nothing acknowledged when the batch was built.
        new_users: u64,
    }

    impl Plan {
        fn take_batch(&self) -> Batch {
            let n = self.batch as u64;
            let first = self.next.fetch_add(n, Ordering::Relaxed);
            let ts = unix_ms();
            let mut body = Vec::with_capacity(self.batch * 420 + 16);
            body.extend_from_slice(br#"{"events":["#);
            let mut new_users = 0;
            for pos in first..first + n {
                if pos > first {
                    body.push(b',');
                }
                push_event(&mut body, self, pos, ts);
                new_users += u64::from(!self.stored.get(pos % self.users));
            }
            body.extend_from_slice(b"]}");
            let mut req = Vec::with_capacity(self.head.len() + 16 + body.len());
            req.extend_from_slice(self.head.as_bytes());
            // Writing to a Vec cannot fail.
            let _ = write!(req, "{}\r\n\r\n", body.len());
            req.extend_from_slice(&body);
            Batch {
                req,
                first,
                n,
                new_users,
            }
        }
    }

    /// Event `pos`: user `u = pos % users`, the user's `step = pos / users`-th event. Each user
    /// goes through visits of [`VISIT`] events, as the SDK would send them: a page view (an
    /// article for two users in three, a product page otherwise), scrolls of rising depth (past
    /// 75 % at the end, which `scroll_offer` looks for), a hover start and end on a target
    /// (`product-image`, which `hover_review` looks for, or `cta`), a click, a custom event.
    fn push_event(buf: &mut Vec<u8>, plan: &Plan, pos: u64, ts: u64) {
        let u = pos % plan.users;
        let step = pos / plan.users;
        let visit = step / VISIT;
        let product = u % 3 == 2;
        let page = format!(
            "/{}/{}",
            if product { "product" } else { "article" },
            (u + visit * 13) % 97
        );
        let device = ["desktop", "mobile", "desktop", "tablet"][(u / 3 % 4) as usize];
        let hour = (u * 7 + visit * 5) % 24;
        let hover = if product { "product-image" } else { "cta" };
        let (kind, target, props) = match step % VISIT {
            0 => (
                "page_view",
                None,
                format!(r#"{{"path":"{page}","title":"Page {}"}}"#, u % 97),
            ),
            1 => ("scroll", None, format!(r#"{{"depth":{}}}"#, 20 + u % 10)),
            2 => (
                "hover",
                Some(hover),
                r#"{"phase":"start","duration_ms":0}"#.to_string(),
            ),
            3 => (
                "scroll",
                None,
                format!(r#"{{"depth":{0},"max_depth":{0}}}"#, 50 + u % 10),
            ),
            4 => (
                "hover",
                Some(hover),
                format!(r#"{{"phase":"end","duration_ms":{}}}"#, 2500 + u % 2000),
            ),
            5 => (
                "scroll",
                None,
                format!(r#"{{"depth":{0},"max_depth":{0}}}"#, 80 + u % 15),
            ),
            6 => ("click", Some("cta"), "{}".to_string()),
            _ => (
                "custom",
                None,
                format!(
                    r#"{{"name":"share","channel":"{}","visit":{visit}}}"#,
                    if u.is_multiple_of(2) { "email" } else { "link" }
                ),
            ),
        };
        let (run, tag) = (&plan.run_id, plan.tag);
        // Writing to a Vec cannot fail.
        let _ = write!(
            buf,
            r#"{{"id":"{run}{tag}-{pos}","type":"{kind}","user":"lg-{run}-{u}","session":"s{tag}-{u}-{visit}","ts":{ts}"#
        );
        if let Some(t) = target {
            let _ = write!(buf, r#","target":"{t}""#);
        }
        let _ = write!(
            buf,
            r#","props":{props},"context":{{"page":"{page}","device":"{device}","hour":{hour}}},"consent":{{"analytics":true,"personalization":true}}}}"#
        );
    }

    /// One keep-alive HTTP/1.1 connection.
    struct Conn {
        w: TcpStream,
        r: BufReader<TcpStream>,
        line: String,
    }

    struct Resp {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
        /// The server will close the connection after this answer.
        close: bool,
    }

    fn bad_data(msg: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
    }

    impl Conn {
        fn open(addr: SocketAddr) -> io::Result<Conn> {
            let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            Ok(Conn {
                r: BufReader::with_capacity(64 << 10, s.try_clone()?),
                w: s,
                line: String::new(),
            })
        }

        fn send(&mut self, req: &[u8]) -> io::Result<()> {
            self.w.write_all(req)
        }

        /// Reads one answer; `timeout` bounds every read (so a stalled server ends the run).
        fn recv(&mut self, timeout: Duration) -> io::Result<Resp> {
            self.r.get_ref().set_read_timeout(Some(timeout))?;
            let status = {
                self.read_line()?;
                let mut parts = self.line.split_whitespace();
                match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
                    (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
                    _ => return Err(bad_data("not an HTTP/1.x status line")),
                }
            };
            let (mut len, mut chunked, mut close, mut retry_after) = (None, false, false, None);
            loop {
                self.read_line()?;
                let l = self.line.trim_end();
                if l.is_empty() {
                    break;
                }
                let Some((k, v)) = l.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    len = Some(
                        v.parse::<usize>()
                            .map_err(|_| bad_data("bad content-length"))?,
                    );
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                } else if k.eq_ignore_ascii_case("retry-after") {
                    retry_after = v.parse::<u64>().ok().map(Duration::from_secs);
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    self.read_line()?;
                    let size = self.line.trim().split(';').next().unwrap_or("");
                    let size =
                        usize::from_str_radix(size, 16).map_err(|_| bad_data("bad chunk size"))?;
                    if size == 0 {
                        // Trailers, then the empty line.
                        loop {
                            self.read_line()?;
                            if self.line.trim_end().is_empty() {
                                break;
                            }
                        }
                        break;
                    }
                    let old = body.len();
                    body.resize(old + size, 0);
                    self.r.read_exact(&mut body[old..])?;
                    self.read_line()?;
                }
            } else if let Some(n) = len {
                body.resize(n, 0);
                self.r.read_exact(&mut body)?;
            } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
                self.r.read_to_end(&mut body)?;
                close = true;
            }
            Ok(Resp {
                status,
                retry_after,
                body,
                close,
            })
        }

        fn read_line(&mut self) -> io::Result<()> {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                ));
            }
            Ok(())
        }
    }

    #[derive(Deserialize)]
    struct AckBody {
        accepted: u64,
        #[serde(default)]
        duplicates: u64,
        #[serde(default)]
        not_consented: u64,
    }

    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }

    #[derive(Deserialize)]
    struct ErrorDetail {
        code: String,
    }

    /// Counters and the latency histogram of one client (merged over clients at the end).
    struct HttpStats {
        /// Answers (any status) received inside the window.
        answered_in_window: u64,
        ok_in_window: u64,
        /// `accepted + duplicates` of the 202 answers received inside the window.
        acked_in_window: u64,
        new_user_events_in_window: u64,
        s429_in_window: u64,
        s429_total: u64,
        retried_after_429: u64,
        resent_after_error: u64,
        gave_up_batches: u64,
        gave_up_events: u64,
        errors: u64,
        error_codes: BTreeMap<String, u64>,
        acked_total: u64,
        duplicates: u64,
        not_consented: u64,
        short_acks: u64,
        unfinished_at_end: u64,
        /// Events in batches sent at least once.
        events_sent: u64,
        /// Requests written (first sends and resends).
        requests_sent: u64,
        /// Send → complete answer, of requests sent inside the window (any status), µs.
        latency: Histogram<u64>,
    }

    impl HttpStats {
        fn new() -> Self {
            HttpStats {
                answered_in_window: 0,
                ok_in_window: 0,
                acked_in_window: 0,
                new_user_events_in_window: 0,
                s429_in_window: 0,
                s429_total: 0,
                retried_after_429: 0,
                resent_after_error: 0,
                gave_up_batches: 0,
                gave_up_events: 0,
                errors: 0,
                error_codes: BTreeMap::new(),
                acked_total: 0,
                duplicates: 0,
                not_consented: 0,
                short_acks: 0,
                unfinished_at_end: 0,
                events_sent: 0,
                requests_sent: 0,
                latency: new_hist(),
            }
        }

        fn error(&mut self, code: String) {
            self.errors += 1;
            *self.error_codes.entry(code).or_default() += 1;
        }

        fn merge(&mut self, o: &HttpStats) {
            self.answered_in_window += o.answered_in_window;
            self.ok_in_window += o.ok_in_window;
            self.acked_in_window += o.acked_in_window;
            self.new_user_events_in_window += o.new_user_events_in_window;
            self.s429_in_window += o.s429_in_window;
            self.s429_total += o.s429_total;
            self.retried_after_429 += o.retried_after_429;
            self.resent_after_error += o.resent_after_error;
            self.gave_up_batches += o.gave_up_batches;
            self.gave_up_events += o.gave_up_events;
            self.errors += o.errors;
            for (k, v) in &o.error_codes {
                *self.error_codes.entry(k.clone()).or_default() += v;
            }
            self.acked_total += o.acked_total;
            self.duplicates += o.duplicates;
            self.not_consented += o.not_consented;
            self.short_acks += o.short_acks;
            self.unfinished_at_end += o.unfinished_at_end;
            self.events_sent += o.events_sent;
            self.requests_sent += o.requests_sent;
            // Same constant bounds on both sides, so adding cannot go out of range.
            self.latency
                .add(&o.latency)
                .expect("histograms share bounds");
        }
    }

    /// What became of one batch.
    enum Outcome {
        Done,
        /// Not answered 202 when the run stopped.
        Unfinished,
    }

    /// One client connection's closed loop: send a batch, build the next one while the answer
    /// is on its way, read the answer, repeat until the window ends. A 429 waits `Retry-After`
    /// (capped) and resends the same bytes; so does a broken connection, after reconnecting.
    fn client(
        plan: &Plan,
        idx: usize,
        ready: mpsc::Sender<Result<Option<u32>, String>>,
        start: mpsc::Receiver<Timeline>,
        gate: &Gate,
    ) -> HttpStats {
        let mut stats = HttpStats::new();
        let addr = plan.addrs[idx % plan.addrs.len()];
        let conn = match Conn::open(addr) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!("connect {addr}: {e}")));
                return stats;
            }
        };
        let _ = ready.send(Ok(current_tid()));
        drop(ready);
        let Ok(tl) = start.recv() else {
            return stats;
        };
        let mut conn = Some(conn);
        sleep_until(tl.t0);
        let mut next: Option<Batch> = None;
        while Instant::now() < tl.window_end {
            let batch = next.take().unwrap_or_else(|| plan.take_batch());
            stats.events_sent += batch.n;
            if let Outcome::Unfinished =
                send_batch(plan, addr, &tl, &mut conn, &batch, &mut next, &mut stats)
            {
                stats.unfinished_at_end += 1;
                break;
            }
        }
        drop(conn);
        // Stay alive, and so countable, until the final CPU sample.
        gate.wait_until(tl.drain_end + GRACE);
        stats
    }

    fn send_batch(
        plan: &Plan,
        addr: SocketAddr,
        tl: &Timeline,
        conn: &mut Option<Conn>,
        batch: &Batch,
        next: &mut Option<Batch>,
        stats: &mut HttpStats,
    ) -> Outcome {
        let mut attempts = 0u32;
        loop {
            let c = match conn {
                Some(c) => c,
                None => match Conn::open(addr) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        stats.error(format!("connect: {}", e.kind()));
                        if Instant::now() >= tl.window_end {
                            return Outcome::Unfinished;
                        }
                        thread::sleep(RECONNECT_WAIT);
                        continue;
                    }
                },
            };
            let sent = Instant::now();
            stats.requests_sent += 1;
            let res = c.send(&batch.req).and_then(|()| {
                // The next request is built while this one is being answered.
                if next.is_none() && sent < tl.window_end {
                    *next = Some(plan.take_batch());
                }
                let left = tl.drain_end.saturating_duration_since(Instant::now());
                c.recv(left.max(Duration::from_millis(1)))
            });
            let done = Instant::now();
            let in_window = tl.in_window(done);
            let r = match res {
                Ok(r) => r,
                Err(e) => {
                    *conn = None;
                    stats.error(format!("io: {}", e.kind()));
                    if done >= tl.window_end {
                        return Outcome::Unfinished;
                    }
                    if attempts >= plan.max_retries {
                        stats.gave_up_batches += 1;
                        stats.gave_up_events += batch.n;
                        return Outcome::Done;
                    }
                    // Same ids: what the server did store comes back as duplicates.
                    attempts += 1;
                    stats.resent_after_error += 1;
                    continue;
                }
            };
            if r.close {
                *conn = None;
            }
            if tl.in_window(sent) {
                stats.latency.saturating_record(micros(done - sent));
            }
            stats.answered_in_window += u64::from(in_window);
            match r.status {
                202 => {
                    match serde_json::from_slice::<AckBody>(&r.body) {
                        Ok(a) => {
                            let acked = a.accepted + a.duplicates;
                            stats.acked_total += acked;
                            stats.duplicates += a.duplicates;
                            stats.not_consented += a.not_consented;
                            stats.short_acks += u64::from(acked + a.not_consented != batch.n);
                            if in_window {
                                stats.ok_in_window += 1;
                                stats.acked_in_window += acked;
                                stats.new_user_events_in_window += batch.new_users;
                            }
                            for pos in batch.first..batch.first + batch.n {
                                plan.stored.set(pos % plan.users);
                            }
                        }
                        Err(_) => stats.error("unparseable 202 body".into()),
                    }
                    return Outcome::Done;
                }
                429 => {
                    stats.s429_total += 1;
                    stats.s429_in_window += u64::from(in_window);
                    if attempts >= plan.max_retries {
                        stats.gave_up_batches += 1;
                        stats.gave_up_events += batch.n;
                        return Outcome::Done;
                    }
                    let wait = r
                        .retry_after
                        .unwrap_or(DEFAULT_RETRY_WAIT)
                        .min(plan.max_retry_wait);
                    if Instant::now() + wait >= tl.window_end {
                        return Outcome::Unfinished;
                    }
                    thread::sleep(wait);
                    attempts += 1;
                    stats.retried_after_429 += 1;
                }
                status => {
                    let code = serde_json::from_slice::<ErrorBody>(&r.body)
                        .map(|e| e.error.code)
                        .unwrap_or_default();
                    stats.error(format!("HTTP {status} {code}"));
                    return Outcome::Done;
                }
            }
        }
    }

    /// `http://host:port[/]` → the socket address and the `Host` header value.
    fn resolve(url: &str) -> Result<(SocketAddr, String)> {
        let host = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok((addr, host))
    }

    /// The server a pass runs against.
    struct Target<'a> {
        name: &'a str,
        url: &'a str,
        write_key: &'a str,
        run_id: &'a str,
        stored: &'a Arc<Stored>,
        cpu_of: CpuOf,
    }

    fn run_pass(args: &Args, t: &Target<'_>, pass: &str, tag: char) -> Result<PassResult> {
        let nodes = t.url.split(',').map(resolve).collect::<Result<Vec<_>>>()?;
        let host = nodes[0].1.clone();
        let plan = Arc::new(Plan {
            addrs: nodes.iter().map(|n| n.0).collect(),
            head: format!(
                "POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: ",
                t.write_key
            ),
            run_id: t.run_id.to_string(),
            tag,
            users: args.users as u64,
            batch: args.batch(),
            max_retries: args.max_retries,
            max_retry_wait: Duration::from_millis(args.max_retry_wait_ms),
            next: AtomicU64::new(0),
            stored: t.stored.clone(),
        });
        let gate = Arc::new(Gate::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<HttpStats>();
        let mut starts = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let (start_tx, start_rx) = mpsc::channel::<Timeline>();
            starts.push(start_tx);
            let (plan, gate, ready_tx, done_tx) = (
                plan.clone(),
                gate.clone(),
                ready_tx.clone(),
                done_tx.clone(),
            );
            thread::Builder::new()
                .name(format!("loadgen-http-{i}"))
                .spawn(move || {
                    let s = client(&plan, i, ready_tx, start_rx, &gate);
                    let _ = done_tx.send(s);
                })
                .context("spawn client thread")?;
        }
        drop((ready_tx, done_tx));

        let setup_deadline = Instant::now() + SETUP_TIMEOUT;
        let (mut tids, mut failures) = (Vec::new(), Vec::new());
        for _ in 0..args.clients {
            let left = setup_deadline.saturating_duration_since(Instant::now());
            match ready_rx
                .recv_timeout(left)
                .context("client connections were not set up in time")?
            {
                Ok(tid) => tids.extend(tid),
                Err(e) => failures.push(e),
            }
        }
        let connected = args.clients - failures.len();
        if connected == 0 {
            bail!(
                "{}: no client could connect; first error: {}",
                t.name,
                failures[0]
            );
        }
        if !failures.is_empty() {
            eprintln!(
                "{} {pass}: {} clients failed to connect; first: {}",
                t.name,
                failures.len(),
                failures[0]
            );
        }

        let stateful = !matches!(t.cpu_of, CpuOf::SelfMinusClient);
        let metrics0 = if stateful { scrape(t.url) } else { None };
        let t0 = Instant::now() + Duration::from_millis(100);
        let warmup = Duration::from_secs_f64(args.warmup);
        let duration = Duration::from_secs_f64(args.duration);
        let tl = Timeline {
            t0,
            window_start: t0 + warmup,
            window_end: t0 + warmup + duration,
            drain_end: t0 + warmup + duration + Duration::from_secs_f64(args.drain),
        };
        for s in starts {
            let _ = s.send(tl);
        }
        sleep_until(tl.window_start);
        let cpu0 = CpuSample::take(t.cpu_of, &tids);
        sleep_until(tl.window_end);
        let cpu1 = CpuSample::take(t.cpu_of, &tids);
        gate.open();
        let secs = duration.as_secs_f64();
        let (cpu_server, cpu_client) = CpuSample::pct(&cpu0, &cpu1, secs);

        let mut total = HttpStats::new();
        let hard_end = tl.drain_end + GRACE + Duration::from_secs(2);
        let mut finished = 0;
        while finished < connected {
            let left = hard_end.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(s) => {
                    total.merge(&s);
                    finished += 1;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!(
                        "{} {pass}: {} clients did not stop in time; partial results",
                        t.name,
                        connected - finished
                    );
                    break;
                }
            }
        }
        let metrics1 = if stateful { scrape(t.url) } else { None };
        let mut res = PassResult::new(
            t.name, pass, connected, failures, &total, secs, args, stateful, t.stored, cpu_server,
            cpu_client,
        );
        res.server_counters = metrics0
            .zip(metrics1)
            .map(|(a, b)| ServerCounters::between(&a, &b));
        Ok(res)
    }

    /// `GET /metrics` as `name{labels}` → value (None if the server has no such endpoint).
    pub(crate) fn scrape(url: &str) -> Option<BTreeMap<String, f64>> {
        // Of several nodes (`--url a,b,c`), the first one's.
        let url = url.split(',').next().unwrap_or(url);
        let text = ureq::get(format!("{url}/metrics"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// What trimtab's own counters (`/metrics`) say happened during one pass.
    #[derive(Serialize, Default)]
    pub(crate) struct ServerCounters {
        events_accepted: f64,
        events_duplicate: f64,
        events_rejected: BTreeMap<String, f64>,
        rule_runs: f64,
        rule_errors: BTreeMap<String, f64>,
        rule_adjustments: f64,
        adjustments_decided: f64,
        commits: f64,
        commit_mean_ms: f64,
        batches_per_commit: f64,
        /// After the pass (a gauge).
        users_cached: f64,
    }

    impl ServerCounters {
        pub(crate) fn between(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> Self {
            let label = |key: &str, name: &str| -> String {
                let pat = format!("{name}=\"");
                key.find(&pat)
                    .and_then(|i| key[i + pat.len()..].split('"').next())
                    .unwrap_or("")
                    .to_string()
            };
            let mut c = ServerCounters::default();
            let (mut commit_s, mut batches) = (0.0, 0.0);
            for (k, &v) in b {
                let d = v - a.get(k).copied().unwrap_or(0.0);
                let name = k.split('{').next().unwrap_or(k);
                match name {
                    "trimtab_events_accepted_total" => c.events_accepted += d,
                    "trimtab_events_duplicate_total" => c.events_duplicate += d,
                    "trimtab_events_rejected_total" if d != 0.0 => {
                        *c.events_rejected.entry(label(k, "reason")).or_default() += d;
                    }
                    "trimtab_rule_runs_total" => c.rule_runs += d,
                    "trimtab_rule_errors_total" if d != 0.0 => {
                        *c.rule_errors.entry(label(k, "rule")).or_default() += d;
                    }
                    "trimtab_rule_adjustments_total" => c.rule_adjustments += d,
                    "trimtab_adjustments_decided_total" => c.adjustments_decided += d,
                    "trimtab_commit_seconds_count" => c.commits += d,
                    "trimtab_commit_seconds_sum" => commit_s += d,
                    "trimtab_commit_batch_size_sum" => batches += d,
                    "trimtab_users_cached" => c.users_cached += v,
                    _ => {}
                }
            }
            if c.commits > 0.0 {
                c.commit_mean_ms = commit_s / c.commits * 1000.0;
                c.batches_per_commit = batches / c.commits;
            }
            c
        }

        /// One line of what the counters say.
        pub(crate) fn summary(&self) -> String {
            format!(
                "accepted {:.0}, duplicate {:.0}, rejected {:?}, rule runs {:.0}, rule errors {:?}, \
                 rule adjustments {:.0}, adjustments decided {:.0}, commits {:.0} (mean {:.2} ms, \
                 {:.1} batches each), users cached {:.0}",
                self.events_accepted,
                self.events_duplicate,
                self.events_rejected,
                self.rule_runs,
                self.rule_errors,
                self.rule_adjustments,
                self.adjustments_decided,
                self.commits,
                self.commit_mean_ms,
                self.batches_per_commit,
                self.users_cached
            )
        }
    }

    #[derive(Serialize)]
    struct PassResult {
        name: String,
        /// `new` (fresh data dir), `known` (same users again) or `-` (the stateless baseline).
        pass: String,
        clients_connected: usize,
        setup_failures: usize,
        first_setup_failure: Option<String>,
        /// Answers of any status received inside the window, per second.
        requests_per_s: f64,
        /// `accepted + duplicates` of 202 answers received inside the window, per second.
        acked_events_per_s: f64,
        answers_202_in_window: u64,
        answers_429_in_window: u64,
        answers_429_total: u64,
        retried_after_429: u64,
        resent_after_error: u64,
        gave_up_batches: u64,
        gave_up_events: u64,
        errors: u64,
        error_codes: BTreeMap<String, u64>,
        acked_events_total: u64,
        duplicates: u64,
        not_consented: u64,
        /// 202 answers whose counts do not add up to the batch size.
        short_acks: u64,
        /// Batches not yet answered 202 when the run stopped (in flight or waiting to retry).
        unfinished_at_end: u64,
        events_sent: u64,
        requests_sent: u64,
        users: u64,
        /// Events sent / users: below 1, not every user got an event in this pass.
        rounds_through_users: f64,
        /// Of the events acknowledged inside the window, the share whose user had nothing
        /// acknowledged when the batch was built (trimtab only).
        new_user_share_in_window: Option<f64>,
        /// Users with at least one acknowledged event after this pass (trimtab only).
        users_stored_after: Option<u64>,
        /// Send → complete answer of requests sent inside the window (any status).
        latency: Percentiles,
        cpu_server_pct_of_core: Option<f64>,
        cpu_client_pct_of_core: Option<f64>,
        /// trimtab's `/metrics`, before → after the pass.
        server_counters: Option<ServerCounters>,
    }

    impl PassResult {
        #[allow(clippy::too_many_arguments)]
        fn new(
            name: &str,
            pass: &str,
            connected: usize,
            failures: Vec<String>,
            s: &HttpStats,
            secs: f64,
            args: &Args,
            stateful: bool,
            stored: &Stored,
            cpu_server: Option<f64>,
            cpu_client: Option<f64>,
        ) -> Self {
            let users = args.users as u64;
            PassResult {
                name: name.to_string(),
                pass: pass.to_string(),
                clients_connected: connected,
                setup_failures: failures.len(),
                first_setup_failure: failures.into_iter().next(),
                requests_per_s: s.answered_in_window as f64 / secs,
                acked_events_per_s: s.acked_in_window as f64 / secs,
                answers_202_in_window: s.ok_in_window,
                answers_429_in_window: s.s429_in_window,
                answers_429_total: s.s429_total,
                retried_after_429: s.retried_after_429,
                resent_after_error: s.resent_after_error,
                gave_up_batches: s.gave_up_batches,
                gave_up_events: s.gave_up_events,
                errors: s.errors,
                error_codes: s.error_codes.clone(),
                acked_events_total: s.acked_total,
                duplicates: s.duplicates,
                not_consented: s.not_consented,
                short_acks: s.short_acks,
                unfinished_at_end: s.unfinished_at_end,
                events_sent: s.events_sent,
                requests_sent: s.requests_sent,
                users,
                rounds_through_users: s.events_sent as f64 / users as f64,
                new_user_share_in_window: (stateful && s.acked_in_window > 0)
                    .then(|| s.new_user_events_in_window as f64 / s.acked_in_window as f64),
                users_stored_after: stateful.then(|| stored.count()),
                latency: Percentiles::of(&s.latency),
                cpu_server_pct_of_core: cpu_server,
                cpu_client_pct_of_core: cpu_client,
                server_counters: None,
            }
        }

        fn label(&self) -> String {
            if self.pass == "-" {
                self.name.clone()
            } else {
                format!("{} {}", self.name, self.pass)
            }
        }
    }

    #[derive(Serialize)]
    struct HttpRatios {
        acked_events_per_s: f64,
        requests_per_s: f64,
        latency_p50: f64,
        latency_p99: f64,
        latency_p999: f64,
    }

    impl HttpRatios {
        fn of(t: &PassResult, b: &PassResult) -> Self {
            HttpRatios {
                acked_events_per_s: ratio(t.acked_events_per_s, b.acked_events_per_s),
                requests_per_s: ratio(t.requests_per_s, b.requests_per_s),
                latency_p50: ratio(t.latency.p50_ms, b.latency.p50_ms),
                latency_p99: ratio(t.latency.p99_ms, b.latency.p99_ms),
                latency_p999: ratio(t.latency.p999_ms, b.latency.p999_ms),
            }
        }
    }

    #[derive(Serialize)]
    struct HttpReport {
        mode: &'static str,
        machine: Machine,
        params: Args,
        baseline: Option<PassResult>,
        new: Option<PassResult>,
        known: Option<PassResult>,
        /// trimtab pass / baseline.
        ratios_new: Option<HttpRatios>,
        ratios_known: Option<HttpRatios>,
    }

    /// `--mode http`: the baseline (one pass), then trimtab's passes `new` and `known`.
    pub fn run(args: &Args, machine: Machine) -> Result<()> {
        if !args.json {
            print_header(&machine, args);
        }
        let users = args.users as u64;
        let baseline = if args.skip_baseline {
            None
        } else {
            let server = baseline::start().context("start baseline server")?;
            note(
                args,
                &format!(
                    "baseline: bare actix-web JSON parse + count on {}",
                    server.url
                ),
            );
            let stored = Arc::new(Stored::new(users));
            let run_id = format!("{:08x}", rand::rng().random::<u32>());
            let t = Target {
                name: "baseline",
                url: &server.url,
                write_key: "baseline-key",
                run_id: &run_id,
                stored: &stored,
                cpu_of: CpuOf::SelfMinusClient,
            };
            let res = run_pass(args, &t, "-", 'b');
            server.stop();
            Some(res?)
        };

        let (new, known) = if args.skip_target {
            (None, None)
        } else if let Some(url) = &args.url {
            let key = args
                .write_key
                .clone()
                .context("--url needs --write-key (or TRIMTAB_WRITE_KEY)")?;
            eprintln!(
                "warning: driving an existing server at {url}: pass `new` uses new user names, but \
                 the server is not fresh; batches above its [limits] max_batch_events are refused"
            );
            two_passes(
                args,
                "trimtab",
                url.trim_end_matches('/'),
                &key,
                CpuOf::None,
            )?
        } else {
            let b = args.batch();
            let extra_config = if b > DEFAULT_MAX_BATCH {
                format!(
                    "[limits]\nmax_batch_events = {b}\nmax_body_bytes = {}\n",
                    DEFAULT_MAX_BODY.max(b * 1024)
                )
            } else {
                String::new()
            };
            let server = target::spawn(
                &args.server_bin,
                &args.server_set,
                &SHIPPED_RULES,
                &extra_config,
            )?;
            note(
                args,
                &format!(
                    "trimtab: spawned {} (pid {}) on {}, data in {}, rules: bench + {}",
                    args.server_bin.display(),
                    server.pid(),
                    server.url,
                    server.dir.path().display(),
                    SHIPPED_RULES
                        .map(|(n, _)| n.trim_end_matches(".rhai"))
                        .join(", ")
                ),
            );
            let res = two_passes(
                args,
                "trimtab",
                &server.url,
                &server.write_key,
                CpuOf::Pid(server.pid()),
            );
            let stopped = server.stop();
            note(args, &format!("trimtab: {stopped}"));
            res?
        };

        let ratios = |t: &Option<PassResult>| {
            baseline
                .as_ref()
                .zip(t.as_ref())
                .map(|(b, t)| HttpRatios::of(t, b))
        };
        let report = HttpReport {
            mode: "http",
            machine,
            params: args.clone(),
            ratios_new: ratios(&new),
            ratios_known: ratios(&known),
            baseline,
            new,
            known,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        Ok(())
    }

    fn two_passes(
        args: &Args,
        name: &str,
        url: &str,
        key: &str,
        cpu_of: CpuOf,
    ) -> Result<(Option<PassResult>, Option<PassResult>)> {
        let stored = Arc::new(Stored::new(args.users as u64));
        let run_id = format!("{:08x}", rand::rng().random::<u32>());
        let t = Target {
            name,
            url,
            write_key: key,
            run_id: &run_id,
            stored: &stored,
            cpu_of,
        };
        let new = run_pass(args, &t, "new", 'n')?;
        note(
            args,
            &format!(
                "{name} new: {:.0} events/s acknowledged; {} of {} users stored",
                new.acked_events_per_s,
                stored.count(),
                args.users
            ),
        );
        thread::sleep(SETTLE);
        let known = run_pass(args, &t, "known", 'k')?;
        Ok((Some(new), Some(known)))
    }

    fn print_header(m: &Machine, a: &Args) {
        println!(
            "machine: {} cpus, {}, {:.1} GiB RAM, Linux {}, load average {:.2} at start",
            m.cpus, m.cpu_model, m.mem_gib, m.kernel, m.loadavg_1m
        );
        println!(
            "params: mode=http clients={} batch={} users={} duration={}s warmup={}s drain={}s max-retries={} \
             max-retry-wait={}ms (closed loop; baseline first, then trimtab: pass new on a fresh data dir, \
             pass known with the same users)",
            a.clients, a.batch(), a.users, a.duration, a.warmup, a.drain, a.max_retries, a.max_retry_wait_ms
        );
        super::print_server_set(a);
    }

    impl HttpReport {
        fn print(&self) {
            let runs: Vec<&PassResult> = [&self.baseline, &self.new, &self.known]
                .into_iter()
                .flatten()
                .collect();
            let ratio_cols: Vec<(&str, &HttpRatios)> = [
                ("new/base", &self.ratios_new),
                ("known/base", &self.ratios_known),
            ]
            .into_iter()
            .filter_map(|(n, r)| r.as_ref().map(|r| (n, r)))
            .collect();
            let mut header = format!("{:<34}", "");
            for r in &runs {
                let _ = write!(header, "{:>15}", r.label());
            }
            for (n, _) in &ratio_cols {
                let _ = write!(header, "{n:>12}");
            }
            println!("\n{header}");
            let row = |label: &str,
                       f: &dyn Fn(&PassResult) -> String,
                       q: Option<&dyn Fn(&HttpRatios) -> f64>| {
                let mut line = format!("{label:<34}");
                for r in &runs {
                    let _ = write!(line, "{:>15}", f(r));
                }
                if let Some(q) = q {
                    for (_, r) in &ratio_cols {
                        let _ = write!(line, "{:>11.2}x", q(r));
                    }
                }
                println!("{line}");
            };
            let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}%"));
            let ms = |v: f64| format!("{v:.3}");
            row(
                "clients connected",
                &|r| r.clients_connected.to_string(),
                None,
            );
            row(
                "acked events/s",
                &|r| format!("{:.0}", r.acked_events_per_s),
                Some(&|q: &HttpRatios| q.acked_events_per_s),
            );
            row(
                "requests/s",
                &|r| format!("{:.1}", r.requests_per_s),
                Some(&|q: &HttpRatios| q.requests_per_s),
            );
            row(
                "202 / 429 answers in window",
                &|r| format!("{}/{}", r.answers_202_in_window, r.answers_429_in_window),
                None,
            );
            row(
                "429 total / retried after 429",
                &|r| format!("{}/{}", r.answers_429_total, r.retried_after_429),
                None,
            );
            row(
                "gave up (batches / events)",
                &|r| format!("{}/{}", r.gave_up_batches, r.gave_up_events),
                None,
            );
            row(
                "errors / resent after error",
                &|r| format!("{}/{}", r.errors, r.resent_after_error),
                None,
            );
            row(
                "duplicates / not consented",
                &|r| format!("{}/{}", r.duplicates, r.not_consented),
                None,
            );
            row(
                "short acks / unfinished at end",
                &|r| format!("{}/{}", r.short_acks, r.unfinished_at_end),
                None,
            );
            row(
                "events sent / acked (total)",
                &|r| format!("{}/{}", r.events_sent, r.acked_events_total),
                None,
            );
            row(
                "rounds through users",
                &|r| format!("{:.2}", r.rounds_through_users),
                None,
            );
            row(
                "acked in window to new users",
                &|r| {
                    r.new_user_share_in_window
                        .map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
                },
                None,
            );
            row(
                "users stored after pass",
                &|r| r.users_stored_after.map_or("-".into(), |v| v.to_string()),
                None,
            );
            row(
                "request p50 ms",
                &|r| ms(r.latency.p50_ms),
                Some(&|q: &HttpRatios| q.latency_p50),
            );
            row(
                "request p99 ms",
                &|r| ms(r.latency.p99_ms),
                Some(&|q: &HttpRatios| q.latency_p99),
            );
            row(
                "request p99.9 ms",
                &|r| ms(r.latency.p999_ms),
                Some(&|q: &HttpRatios| q.latency_p999),
            );
            row("request max ms", &|r| ms(r.latency.max_ms), None);
            row(
                "server CPU (% of a core)",
                &|r| pct(r.cpu_server_pct_of_core),
                None,
            );
            row(
                "client CPU (% of a core)",
                &|r| pct(r.cpu_client_pct_of_core),
                None,
            );
            for r in &runs {
                if !r.error_codes.is_empty() {
                    println!("{} error codes: {:?}", r.label(), r.error_codes);
                }
                if let Some(c) = &r.server_counters {
                    println!("{} /metrics: {}", r.label(), c.summary());
                }
                if r.rounds_through_users < 1.0 {
                    println!(
                        "note: {} sent {} events, fewer than --users {}: it did not get through \
                         all users once",
                        r.label(),
                        r.events_sent,
                        r.users,
                    );
                }
                if let Some(stored) = r.users_stored_after.filter(|&n| n < r.users) {
                    println!(
                        "note: after {} only {stored} of {} users have an acknowledged event{}",
                        r.label(),
                        r.users,
                        if r.pass == "new" {
                            ", so pass known also meets users that are new to the store"
                        } else {
                            ""
                        }
                    );
                }
            }
            if let Some(n) = &self.new {
                if let Some(share) = n.new_user_share_in_window {
                    println!(
                        "note: in pass new, {:.1}% of the events acknowledged inside the window went to \
                         users with nothing stored yet ({:.2} rounds through the {} users, warmup included)",
                        share * 100.0,
                        n.rounds_through_users,
                        n.users
                    );
                }
            }
        }
    }
}
