//! Cluster mode on NATS JetStream: three real nodes and a real `nats-server` (JetStream on,
//! its own port and store dir) on loopback. Users' events through every node; kill -9 of a
//! node under load — its partitions move, every acknowledged event is in the users' exports,
//! adjustments still reach sockets on the survivors, the node rejoins after a restart;
//! erasure through one node leaves nothing on any node or in the stream's files.
//!
//! Needs `nats-server` on the PATH (`apt-get install nats-server`; `.ci/run` installs it).

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const PARTITIONS: u32 = 8;
/// Token-signing and pseudonym keys every node shares (as an operator sets them).
const TOKEN_KEY: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";
const PSEUDONYM_KEY: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";

/// A `nats-server -js` on a free loopback port with its own store dir, killed on drop.
struct Nats {
    child: Child,
    url: String,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("trimtab-nats-")
            .tempdir()
            .expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let store = dir.path().join("js");
        let child = Self::spawn(port, &store);
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            store,
            _dir: dir,
        }
    }

    fn spawn(port: u16, store: &std::path::Path) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed for the cluster tests (apt-get install nats-server; .ci/run installs it)");
        let addr = format!("127.0.0.1:{port}");
        poll(WAIT, || std::net::TcpStream::connect(&addr).ok())
            .expect("nats-server did not listen within 10 s");
        child
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and store.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        let port: u16 = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        self.child = Self::spawn(port, &self.store);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(nats: &Nats, name: &str) -> Server {
    node_with_lease(nats, name, 1500)
}

fn node_with_lease(nats: &Nats, name: &str, lease_ms: u64) -> Server {
    node_with(nats, name, lease_ms, "")
}

/// A node with more `[cluster]` settings (`extra`: whole lines).
fn node_with(nats: &Nats, name: &str, lease_ms: u64, extra: &str) -> Server {
    let config = format!(
        "[cluster]\nnats = {:?}\nnode = {name:?}\npartitions = {PARTITIONS}\nlease_ms = {lease_ms}\nquiet_after_ms = 5000\n{extra}\n[rate]\nuser_per_min = 0\n",
        nats.url
    );
    Server::start(
        Opts::with_repo_scripts(&config)
            .env("TRIMTAB_TOKEN_KEY", TOKEN_KEY)
            .env("TRIMTAB_PSEUDONYM_KEY", PSEUDONYM_KEY),
    )
}

/// The partitions a node says it owns (None: not ready).
fn owned(s: &Server) -> Option<Vec<u32>> {
    let r = s.get("/readyz", None);
    if r.status != 200 {
        return None;
    }
    Some(
        r.json["cluster"]["partitions"]
            .as_array()?
            .iter()
            .filter_map(|p| p["partition"].as_u64().map(|p| p as u32))
            .collect(),
    )
}

/// Waits until the nodes own every partition between them, each exactly once, and each
/// node at least one; returns who owns what.
fn settled(nodes: &[&Server]) -> Vec<Vec<u32>> {
    poll(Duration::from_secs(30), || {
        let all: Vec<Vec<u32>> = nodes.iter().map(|s| owned(s)).collect::<Option<_>>()?;
        let union: BTreeSet<u32> = all.iter().flatten().copied().collect();
        let count: usize = all.iter().map(Vec::len).sum();
        (union.len() == PARTITIONS as usize
            && count == PARTITIONS as usize
            && all.iter().all(|v| !v.is_empty()))
        .then_some(all)
    })
    .unwrap_or_else(|| {
        let seen: Vec<_> = nodes.iter().map(|s| s.get("/readyz", None).body).collect();
        panic!("the partitions did not settle over the nodes within 30 s: {seen:?}")
    })
}

fn partition_of(user: &str) -> u32 {
    let key: [u8; 32] = hex::decode(PSEUDONYM_KEY)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let k = trimtab_privacy::Pseudonymizer::new(key).user(user);
    trimtab_cluster::names::partition(&k, PARTITIONS)
}

fn event_ids(export: &Value) -> BTreeSet<String> {
    export["events"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_nodes_share_users_and_lose_nothing_when_one_is_killed() {
    let nats = Nats::start();
    let mut nodes = [node(&nats, "n1"), node(&nats, "n2"), node(&nats, "n3")];
    let before = settled(&nodes.iter().collect::<Vec<_>>());

    // A socket on n2 for a user whose partition n1 owns: its adjustments must come from
    // whichever node owns the user, before and after n1 dies.
    let ws_user = (0..200)
        .map(|i| format!("reader-{i}"))
        .find(|u| before[0].contains(&partition_of(u)))
        .expect("a user in one of n1's partitions");
    let token = nodes[0].identify(&ws_user);
    let mut ws = nodes[1].ws_connect(&token);
    ws.send_acked(vec![page_view(&eid("pv"), "/article/a")]);
    ws.send_events(vec![scroll(&eid("sc"), 80.0, "/article/a")]);
    ws.wait_adjust("offer", deadline(WAIT))
        .unwrap_or_else(|| panic!("no offer through the cluster; seen {:?}", ws.seen));

    // Load: 40 users' batches through all three nodes, each acknowledged batch remembered.
    let addrs: Vec<String> = nodes.iter().map(|s| s.base.clone()).collect();
    let acked: Arc<Mutex<HashMap<String, BTreeSet<String>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..3usize {
        let (addrs, acked, stop, killed) =
            (addrs.clone(), acked.clone(), stop.clone(), killed.clone());
        load.push(std::thread::spawn(move || {
            let agent = agent_trusting(None);
            let mut i = 0usize;
            let mut refused = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let n = (t + i) % 3;
                if n == 0 && killed.load(Ordering::Relaxed) {
                    continue;
                }
                let user = format!("user-{}", (t * 7 + i) % 40);
                let events: Vec<Value> = (0..5)
                    .map(|_| for_user(page_view(&eid("ld"), "/article/x"), &user))
                    .collect();
                let ids: Vec<String> = events
                    .iter()
                    .map(|e| e["id"].as_str().expect("id").to_string())
                    .collect();
                let r = agent
                    .post(format!("{}/v1/events", addrs[n]))
                    .header("Authorization", format!("Bearer {WRITE_KEY}"))
                    .send(batch(events).to_string());
                match r {
                    Ok(resp) if resp.status() == 202 => {
                        acked.lock().unwrap().entry(user).or_default().extend(ids);
                    }
                    _ => refused += 1,
                }
            }
            refused
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    killed.store(true, Ordering::Relaxed);
    nodes[0].kill9();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().expect("load thread");
    }

    // n1's partitions moved to the survivors.
    let after = settled(&[&nodes[1], &nodes[2]]);
    for p in &before[0] {
        assert!(
            after.iter().flatten().any(|q| q == p),
            "partition {p} of the killed node has no owner: {after:?}"
        );
    }
    let live = nodes[1].get("/readyz", None).json["cluster"]["nodes"].clone();
    assert_eq!(live, json!(["n2", "n3"]), "the killed node is still listed");
    // Metrics per partition: the owned count and, for each owned partition, how far it is read.
    let metrics = nodes[1].get("/metrics", None).body;
    assert!(
        metrics.contains(&format!(
            "trimtab_cluster_partitions_owned {}",
            after[0].len()
        )),
        "{metrics}"
    );
    for p in &after[0] {
        assert!(
            metrics.contains(&format!(
                "trimtab_cluster_read_sequence{{partition=\"{p}\"}}"
            )),
            "no read sequence for partition {p}"
        );
    }

    // Every acknowledged event is in its user's export, asked through either survivor.
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(total > 100, "too little load got through: {total} events");
    for (i, (user, ids)) in acked.iter().enumerate() {
        let export = nodes[1 + i % 2]
            .export(user)
            .unwrap_or_else(|| panic!("{user} is unknown after the kill"));
        let have = event_ids(&export);
        let lost: Vec<_> = ids.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged events of {user} lost: {lost:?}",
            lost.len()
        );
    }

    // The socket on n2 still gets the user's adjustments, now from the partition's new owner.
    ws.send_acked(vec![page_view(&eid("pv"), "/article/b")]);
    ws.send_events(vec![scroll(&eid("sc"), 90.0, "/article/b")]);
    let n_offers = ws.adjusts(Some("offer")).len();
    let got = ws.recv_json_until(deadline(WAIT), |m| {
        m["type"] == "adjust" && m["slot"] == "offer"
    });
    assert!(
        got.is_some(),
        "no adjustment after the kill (had {n_offers} before); seen {:?}",
        ws.seen
    );

    // The killed node restarts on its data dir and takes a share again.
    nodes[0].restart();
    let rejoined = settled(&nodes.iter().collect::<Vec<_>>());
    assert!(!rejoined[0].is_empty());
    let u = acked.keys().next().expect("a user").clone();
    let export = nodes[0]
        .export(&u)
        .expect("export through the rejoined node");
    assert!(acked[&u].is_subset(&event_ids(&export)));
}

#[test]
fn erasure_through_one_node_leaves_nothing_on_any_node_or_in_the_stream() {
    let nats = Nats::start();
    let nodes = [node(&nats, "n1"), node(&nats, "n2"), node(&nats, "n3")];
    settled(&nodes.iter().collect::<Vec<_>>());
    for s in &nodes {
        s.post_ok(
            WRITE_KEY,
            vec![
                for_user(page_view(&eid("er"), "/article/e"), "erin"),
                for_user(page_view(&eid("ot"), "/article/o"), "otto"),
            ],
        );
    }
    let key = nodes[2].export("erin").expect("erin's data")["key"]
        .as_str()
        .expect("key")
        .to_string();
    assert_eq!(event_ids(&nodes[0].export("erin").expect("erin")).len(), 3);
    let stream_has = |k: &str| -> bool {
        walk(&nats.store)
            .iter()
            .any(|f| std::fs::read(f).is_ok_and(|b| contains(&b, k.as_bytes())))
    };
    assert!(
        stream_has(&key),
        "the stream's files should hold erin's subject before erasure"
    );

    let r = nodes[1].delete("/v1/users/erin", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["erased"]["events"], 3, "{}", r.body);
    for s in &nodes {
        assert!(
            s.export("erin").is_none(),
            "erin readable through {}",
            s.base
        );
    }
    assert!(
        !stream_has(&key),
        "erin's key is still in the stream's files after erasure"
    );
    // Other users are untouched.
    assert_eq!(event_ids(&nodes[0].export("otto").expect("otto")).len(), 3);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const PROBE: &str = r#"// probe: answers every custom "probe" event
if event.type == "custom" && event.props.name == "probe" {
    adjust("probe", "v1", #{ version: "v1" });
}
"#;

#[test]
fn a_definition_put_on_one_node_fires_on_another() {
    let nats = Nats::start();
    let nodes = [node(&nats, "n1"), node(&nats, "n2"), node(&nats, "n3")];
    let owners = settled(&nodes.iter().collect::<Vec<_>>());
    let r = nodes[0].put_raw(
        "/v1/rules/cluster_probe",
        Some(ADMIN_TOKEN),
        PROBE.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    poll(WAIT, || nodes[2].rule("cluster_probe")).expect("the rule put on n1 did not reach n3");

    // A user that n3 owns, with a socket on n3: the rule put on n1 fires there.
    let user = (0..200)
        .map(|i| format!("prober-{i}"))
        .find(|u| owners[2].contains(&partition_of(u)))
        .expect("a user in one of n3's partitions");
    let mut ws = nodes[2].ws_connect(&nodes[2].identify(&user));
    ws.send_events(vec![custom(&eid("pr"), "probe", json!({}))]);
    let m = ws
        .wait_adjust("probe", deadline(WAIT))
        .unwrap_or_else(|| panic!("the shared rule did not fire on n3; seen {:?}", ws.seen));
    assert_eq!(m["variant"], "v1");

    // A broken rule is refused where it is put and reaches no node.
    let broken = PROBE.replace("});", "}");
    let r = nodes[0].put_raw(
        "/v1/rules/cluster_probe",
        Some(ADMIN_TOKEN),
        broken.as_bytes(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    std::thread::sleep(Duration::from_millis(500));
    let st = nodes[2].rule("cluster_probe").expect("still there");
    assert_eq!(
        (&st["state"], &st["enabled"]),
        (&json!("active"), &json!(true)),
        "{st}"
    );

    // Experiments too, and deletions.
    let def = json!({"slot": "offer", "primary_metric": "click_through",
        "variants": [{"name": "default"}, {"name": "discount"}]});
    let r = nodes[1].put_raw(
        "/v1/experiments/shared-exp",
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    poll(WAIT, || {
        (nodes[0]
            .get("/v1/experiments/shared-exp", Some(ADMIN_TOKEN))
            .status
            == 200)
            .then_some(())
    })
    .expect("the experiment put on n2 did not reach n1");
    let r = nodes[2].delete("/v1/rules/cluster_probe", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 204, "{}", r.body);
    poll(WAIT, || {
        nodes[0].rule("cluster_probe").is_none().then_some(())
    })
    .expect("the rule deleted on n3 is still on n1");

    // A node that starts later gets the shared definitions too.
    let late = node(&nats, "n4");
    poll(WAIT, || {
        (late
            .get("/v1/experiments/shared-exp", Some(ADMIN_TOKEN))
            .status
            == 200)
            .then_some(())
    })
    .expect("a node joining later did not get the shared experiment");
}

#[test]
fn a_node_with_other_secrets_does_not_join() {
    let nats = Nats::start();
    let first = node(&nats, "n1");
    settled(&[&first]);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("trimtab.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nnats = {:?}\nnode = \"n2\"\npartitions = {PARTITIONS}\n",
            nats.url
        ),
    )
    .expect("config");
    std::fs::create_dir_all(dir.path().join("scripts")).expect("scripts");
    let (st, log) = run_to_exit_with(
        &dir.path().join("data"),
        &dir.path().join("scripts"),
        &config,
        &dir.path().join("log"),
        &[("TRIMTAB_TOKEN_KEY", TOKEN_KEY)], // but its own pseudonym key
        Duration::from_secs(30),
    );
    assert!(!st.success());
    assert!(
        log.contains("secrets differ from the cluster's"),
        "unclear refusal: {log}"
    );
}

const GO: &str = r#"
if event.type == "custom" && event.props.name == "go" {
    adjust("offer", "discount", #{ code: "RULE" });
}
"#;

/// Total exposures over the arms of an experiment's results, and the partitions counted.
fn exposed(s: &Server) -> (u64, u64) {
    let r = s.get("/v1/experiments/offer-test/results", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    let total = r.json["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| a["exposed"].as_u64().unwrap_or(0))
        .sum();
    (
        total,
        r.json["cluster"]["partitions_counted"]
            .as_u64()
            .unwrap_or(0),
    )
}

#[test]
fn experiment_statistics_add_up_over_the_nodes_and_survive_a_killed_node() {
    let nats = Nats::start();
    let mut nodes = [node(&nats, "n1"), node(&nats, "n2"), node(&nats, "n3")];
    settled(&nodes.iter().collect::<Vec<_>>());
    let r = nodes[0].put_raw("/v1/rules/go", Some(ADMIN_TOKEN), GO.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let def = json!({"slot": "offer", "primary_metric": "click_through",
        "variants": [{"name": "default"}, {"name": "discount"}]});
    let r = nodes[0].put_raw(
        "/v1/experiments/offer-test",
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for s in &nodes {
        poll(WAIT, || s.rule("go")).expect("the rule reached every node");
        poll(WAIT, || {
            (s.get("/v1/experiments/offer-test", Some(ADMIN_TOKEN))
                .status
                == 200)
                .then_some(())
        })
        .expect("the experiment reached every node");
    }
    // 45 users, each triggered through one node and exposed through another.
    let users = 45;
    for i in 0..users {
        let user = format!("exp-{i}");
        let (a, b) = (&nodes[i % 3], &nodes[(i + 1) % 3]);
        a.post_ok(
            WRITE_KEY,
            vec![for_user(custom(&eid("go"), "go", json!({})), &user)],
        );
        let ex = b.export(&user).expect("export");
        let d = ex["decisions"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["experiment"] == "offer-test"))
            .unwrap_or_else(|| panic!("no experiment decision for {user}: {ex}"))
            .clone();
        let mut imp = custom(&eid("imp"), "x", json!({}));
        imp["type"] = "impression".into();
        imp["props"] = json!({"slot": "offer", "variant": d["variant"], "decision": d["id"]});
        b.post_ok(WRITE_KEY, vec![for_user(imp, &user)]);
    }
    let want = (users as u64, u64::from(PARTITIONS));
    let totals = |s: &Server| {
        poll(Duration::from_secs(20), || {
            let e = exposed(s);
            (e == want).then_some(e)
        })
    };
    for s in &nodes {
        assert_eq!(
            totals(s),
            Some(want),
            "results through {}: {:?}",
            s.base,
            exposed(s)
        );
    }
    // A node dies: its partitions' new owners count them again from the stream — the totals
    // neither lose the dead node's users nor count them twice.
    nodes[0].kill9();
    settled(&[&nodes[1], &nodes[2]]);
    for s in &nodes[1..] {
        assert_eq!(
            totals(s),
            Some(want),
            "after the kill, through {}: {:?}",
            s.base,
            exposed(s)
        );
    }
}

#[test]
fn every_nodes_bandit_learner_learns_from_every_nodes_users() {
    let nats = Nats::start();
    let nodes = [node(&nats, "n1"), node(&nats, "n2"), node(&nats, "n3")];
    settled(&nodes.iter().collect::<Vec<_>>());
    let def = json!({"candidates": ["a", "b", "c"], "window_ms": 1500, "holdout": 0,
                     "policy": "linucb", "params": {"floor": 0.3}});
    let r = nodes[0].put_raw(
        "/v1/bandits/cta",
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for s in &nodes {
        poll(WAIT, || {
            (s.get("/v1/bandits/cta", Some(ADMIN_TOKEN)).status == 200).then_some(())
        })
        .expect("the bandit slot reached every node");
    }
    let n = 24;
    let mut clicks = 0;
    for i in 0..n {
        let user = format!("bu-{i}");
        let (a, b, c) = (&nodes[i % 3], &nodes[(i + 1) % 3], &nodes[(i + 2) % 3]);
        let t = a.identify(&user);
        a.post_ok(&t, vec![page_view(&eid("pv"), "/product")]);
        let r = b.post_raw(
            "/v1/decide",
            Some(&t),
            json!({"slot": "cta"}).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "decide: {}", r.body);
        assert_eq!(r.json["decision"]["source"], "bandit", "{}", r.body);
        if r.json["variant"] == "b" {
            let mut e = click(&eid("c"), "cta");
            e["props"] = json!({ "decision": r.json["decision"]["id"] });
            c.post_ok(&t, vec![e]);
            clicks += 1;
        }
    }
    // Each node's learner absorbed all 24 decisions — a third made on it, the rest on the
    // others — and the clicks, wherever they were sent.
    for s in &nodes {
        let st = poll(Duration::from_secs(15), || {
            let st = s.get("/v1/bandits/cta", Some(ADMIN_TOKEN)).json;
            (st["version"] == n && st["pending"] == 0).then_some(st)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}'s learner did not absorb every node's decisions: {}",
                s.base,
                s.get("/v1/bandits/cta", Some(ADMIN_TOKEN)).body
            )
        });
        assert_eq!(st["arms"][1]["rewarded"], clicks, "{st}");
        let chosen: u64 = (0..3)
            .map(|i| st["arms"][i]["chosen"].as_u64().unwrap())
            .sum();
        assert_eq!(chosen, n as u64, "{st}");
    }
}

#[test]
fn a_node_stopping_gives_its_partitions_back_at_once() {
    // A long lease: only a node's own release hands partitions over within it.
    let nats = Nats::start();
    let mut nodes = [
        node_with_lease(&nats, "n1", 20_000),
        node_with_lease(&nats, "n2", 20_000),
    ];
    let before = settled(&nodes.iter().collect::<Vec<_>>());
    nodes[0].post_ok(
        WRITE_KEY,
        vec![for_user(page_view(&eid("pv"), "/a"), "stayer")],
    );
    nodes[0].sigterm();
    let st = nodes[0]
        .wait_exit(Duration::from_secs(15))
        .expect("n1 stops on SIGTERM");
    assert!(st.success(), "{st}");
    let t = std::time::Instant::now();
    let all = poll(Duration::from_secs(10), || {
        let mine = owned(&nodes[1])?;
        (mine.len() == PARTITIONS as usize).then_some(mine)
    })
    .unwrap_or_else(|| {
        panic!(
            "n2 did not take n1's partitions {:?} within 10 s of its stop",
            before[0]
        )
    });
    assert_eq!(all.len(), PARTITIONS as usize);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        nodes[0].stderr().contains("cluster: left"),
        "{}",
        nodes[0].stderr()
    );
    assert_eq!(
        event_ids(&nodes[1].export("stayer").expect("stayer")).len(),
        1
    );
}

#[test]
fn while_nats_is_away_nothing_is_acknowledged_and_the_node_recovers() {
    let mut nats = Nats::start();
    let nodes = [node(&nats, "n1")];
    settled(&[&nodes[0]]);
    nodes[0].post_ok(
        WRITE_KEY,
        vec![for_user(page_view(&eid("pv"), "/a"), "patient")],
    );
    nats.stop();
    let r = poll(WAIT, || {
        let r = nodes[0].get("/readyz", None);
        (r.status == 503).then_some(r)
    })
    .expect("readyz still 200 with NATS gone");
    assert_eq!(r.json["status"], "cluster_disconnected", "{}", r.body);
    // An event cannot reach the stream: refused with a retryable code, not acknowledged.
    let id = eid("lost");
    let r = nodes[0].post_events(
        WRITE_KEY,
        &batch(vec![for_user(page_view(&id, "/b"), "patient")]),
    );
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{}", r.body);
    nats.restart();
    poll(Duration::from_secs(30), || {
        (nodes[0].get("/readyz", None).status == 200).then_some(())
    })
    .expect("the node did not come back after NATS did");
    // The client's retry goes through, and both events are the user's, once each.
    let r = poll(Duration::from_secs(20), || {
        let r = nodes[0].post_events(
            WRITE_KEY,
            &batch(vec![for_user(page_view(&id, "/b"), "patient")]),
        );
        (r.status == 202).then_some(r)
    })
    .expect("events are still refused after NATS came back");
    // The refused publish may have reached the stream after all (the client queues it while
    // disconnected): then the retry is a duplicate. Either way the event is there once.
    let (a, d) = (r.json["accepted"].as_u64(), r.json["duplicates"].as_u64());
    assert_eq!(a.unwrap_or(0) + d.unwrap_or(0), 1, "{}", r.body);
    // The partition's reader may take a moment to resume after the restart: the export
    // answers 503 until it has read the user's events, then has both.
    let ex = poll(Duration::from_secs(30), || {
        let r = nodes[0].get("/v1/users/patient", Some(ADMIN_TOKEN));
        (r.status == 200 && event_ids(&r.json).len() == 2).then_some(r.json)
    });
    assert!(
        ex.is_some(),
        "{}\n{}",
        nodes[0].get("/v1/users/patient", Some(ADMIN_TOKEN)).body,
        nodes[0].stderr()
    );
}

/// A metric's value summed over its labels (0 when absent).
fn metric(s: &Server, name: &str) -> u64 {
    let body = s.get("/metrics", None).body;
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until a node's checkpoint rounds have nothing left to write: its image count is
/// above zero and stays the same for `quiet`.
fn checkpoints_settle(s: &Server, quiet: Duration) -> u64 {
    let mut last = (u64::MAX, std::time::Instant::now());
    poll(Duration::from_secs(30), || {
        let n = metric(s, "trimtab_cluster_checkpoint_images_total");
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        (n > 0 && last.1.elapsed() >= quiet).then_some(n)
    })
    .expect("the node's checkpoint rounds did not settle within 30 s")
}

/// What a takeover must keep of a user: event ids, decision ids, and the event count the
/// state holds.
type Kept = (BTreeSet<String>, BTreeSet<String>, Value);

fn kept(export: &Value) -> Kept {
    let decisions = export["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (
        event_ids(export),
        decisions,
        export["state"]["events"].clone(),
    )
}

/// Twelve users with events and decisions on a lone node with 300 ms checkpoints; one of
/// them also has a first-paint decision (`POST /v1/decide`), which no stream holds. Returns
/// the node and what each user's export keeps.
fn checkpointed_users(nats: &Nats) -> (Server, Vec<(String, Kept)>) {
    let first = node_with(nats, "n1", 1500, "checkpoint_ms = 300");
    settled(&[&first]);
    let users: Vec<String> = (0..12).map(|i| format!("ck-{i}")).collect();
    for u in &users {
        first.post_ok(
            WRITE_KEY,
            vec![
                for_user(at_hour(page_view(&eid("pv"), "/"), 2), u),
                for_user(scroll(&eid("sc"), 80.0, "/article/a"), u),
            ],
        );
    }
    // 08:00 for the first user, known from an event: the CTA rule decides its first paint.
    let token = first.identify(&users[0]);
    let mouse = json!({"id": eid("m"), "type": "mouse", "session": "s1", "ts": now_ms(),
        "props": {"speed": 10.0, "path_px": 100.0, "idle_ms": 0},
        "consent": {"analytics": true, "personalization": true}});
    first.post_ok(&token, vec![at_hour(mouse, 8)]);
    let r = first.post_raw(
        "/v1/decide",
        Some(&token),
        json!({"slot": "cta", "candidates": ["default", "morning"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["decision"]["source"], "rule", "{}", r.body);
    checkpoints_settle(&first, Duration::from_millis(1500));
    let kept: Vec<_> = users
        .iter()
        .map(|u| (u.clone(), kept(&first.export(u).expect("export"))))
        .collect();
    assert!(
        kept[1..]
            .iter()
            .all(|(_, (e, d, n))| e.len() == 2 && !d.is_empty() && n.as_u64() == Some(2)),
        "every user should have two events and a decision: {kept:?}"
    );
    assert!(
        kept[0].1 .1.len() > kept[1].1 .1.len(),
        "the first-paint decision is missing: {kept:?}"
    );
    (first, kept)
}

#[test]
fn a_new_owner_resumes_from_the_last_checkpoint_and_erasure_shreds_it() {
    let nats = Nats::start();
    let (mut first, kept) = checkpointed_users(&nats);
    first.kill9();

    // A node with an empty data dir takes every partition over: from the checkpoints, not by
    // reading the stream again.
    let second = node_with(&nats, "n2", 1500, "checkpoint_ms = 300");
    settled(&[&second]);
    for (user, want) in &kept {
        let got = kept_of(&second, user);
        assert_eq!(&got, want, "{user} after the takeover");
    }
    assert_eq!(
        metric(&second, "trimtab_cluster_restored_users_total"),
        kept.len() as u64
    );
    assert_eq!(
        metric(&second, "trimtab_cluster_consumed_total"),
        0,
        "the new owner read the stream again instead of resuming after the checkpoint"
    );
    // The restored state carries on.
    let (u0, (events, _, n0)) = &kept[0];
    second.post_ok(
        WRITE_KEY,
        vec![for_user(page_view(&eid("pv"), "/more"), u0)],
    );
    let after = kept_of(&second, u0);
    assert_eq!(after.0.len(), events.len() + 1);
    assert_eq!(
        after.2,
        json!(n0.as_u64().expect("count") + 1),
        "the state counts on from the checkpoint"
    );

    // Erasure shreds the user's checkpoint key and images: nothing in NATS's files names the
    // user, and a later owner restores everyone else but not them.
    let erased = &kept[1].0;
    let key = second.export(erased).expect("export")["key"]
        .as_str()
        .expect("key")
        .to_string();
    let r = second.delete(&format!("/v1/users/{erased}"), Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    let named = walk(&nats.store)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| contains(&b, key.as_bytes())))
        .collect::<Vec<_>>();
    assert!(
        named.is_empty(),
        "NATS's files still name the erased user: {named:?}"
    );
    checkpoints_settle(&second, Duration::from_millis(1500));
    let mut second = second;
    second.kill9();
    let third = node_with(&nats, "n3", 1500, "checkpoint_ms = 300");
    settled(&[&third]);
    assert!(third.export(erased).is_none(), "the erased user came back");
    // Partitions are restored one after the other: wait for the last before counting.
    let want = kept.len() as u64 - 1;
    let restored = poll(WAIT, || {
        let n = metric(&third, "trimtab_cluster_restored_users_total");
        (n >= want).then_some(n)
    });
    assert_eq!(
        restored.unwrap_or_else(|| metric(&third, "trimtab_cluster_restored_users_total")),
        want
    );
    assert_eq!(kept_of(&third, u0), after);
}

fn kept_of(s: &Server, user: &str) -> Kept {
    kept(
        &s.export(user)
            .unwrap_or_else(|| panic!("{user} unknown on {}", s.base)),
    )
}

/// Publishes `payload` on `subject` with NATS's text protocol (JetStream stores it if a
/// stream takes the subject).
fn nats_publish(nats: &Nats, subject: &str, payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let addr = nats.url.trim_start_matches("nats://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to NATS");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    write!(
        conn,
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .unwrap();
    conn.write_all(payload).unwrap();
    conn.write_all(b"\r\nPING\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("PONG");
        if line.starts_with("PONG") {
            return;
        }
        assert!(!line.starts_with("-ERR"), "NATS refused: {line}");
    }
}

#[test]
fn a_checkpoint_that_does_not_open_is_not_used() {
    let nats = Nats::start();
    let (mut first, kept) = checkpointed_users(&nats);
    first.kill9();
    // Every partition's mark replaced by garbage.
    for p in 0..PARTITIONS {
        nats_publish(&nats, &format!("trimtab.st.p.{p}"), b"not a mark");
    }
    let second = node_with(&nats, "n2", 1500, "checkpoint_ms = 300");
    settled(&[&second]);
    // Read from the start instead: nothing restored, every event there and counted once. (The
    // first-paint decision, in no stream, is what only a checkpoint keeps.)
    for (user, (events, decisions, n)) in &kept[1..] {
        let got = kept_of(&second, user);
        assert_eq!((&got.0, &got.2), (events, n), "{user} after the fallback");
        assert_eq!(&got.1, decisions, "{user} after the fallback");
    }
    assert_eq!(metric(&second, "trimtab_cluster_restored_users_total"), 0);
    assert!(metric(&second, "trimtab_cluster_consumed_total") >= 24);
    assert!(
        second.stderr().contains("the checkpoint cannot be used"),
        "the fallback should be logged"
    );
}

fn served_model(s: &Server) -> Option<Value> {
    let r = s.get("/v1/models", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == "click-cta" && m["status"] == "serving")
        .cloned()
}

#[test]
fn a_model_made_on_one_node_serves_on_every_node() {
    let nats = Nats::start();
    let learn = "[learn]\nretrain_every_s = 0\ncheck_every_s = 1\n";
    let nodes = [
        node_with(&nats, "n1", 1500, learn),
        node_with(&nats, "n2", 1500, learn),
    ];
    settled(&nodes.iter().collect::<Vec<_>>());
    let def = json!({"candidates": ["control", "urgent", "social", "detailed"]});
    let r = nodes[0].put_raw(
        "/v1/bandits/cta",
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A model trained offline and put into n1's registry (as an operator does).
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let out = Command::new(sim_bin())
        .args(["--offline", "--rows", "1500", "--seed", "4", "--out"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin())
        .args([
            "train",
            "--json",
            "--epochs",
            "5",
            "--name",
            "click-cta",
            "--log",
        ])
        .arg(&log)
        .arg("--save")
        .arg(nodes[0].models())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let made = poll(Duration::from_secs(20), || served_model(&nodes[0]))
        .expect("n1 did not serve the model put into its registry");
    assert!(made["card"]["origin"].is_null(), "{made}");
    let shared = poll(Duration::from_secs(20), || served_model(&nodes[1])).unwrap_or_else(|| {
        panic!(
            "the model made on n1 does not serve on n2: {}",
            nodes[1].get("/v1/models", Some(ADMIN_TOKEN)).body
        )
    });
    assert_eq!(shared["card"]["sha256"], made["card"]["sha256"]);
    assert_eq!(shared["card"]["origin"], "n1 v1", "{shared}");
    assert!(nodes[1].models().join("click-cta/v1.safetensors").exists());

    // A shared model that does not verify (its weights are not its card's) is refused where
    // it arrives; the model serving there keeps serving.
    let mut card = made["card"].clone();
    card["sha256"] = json!("00".repeat(32));
    let body = json!({"node": "n9", "card": card, "weights": "Z2FyYmFnZQ=="}).to_string();
    let entry = json!({"instance": "elsewhere", "body": body}).to_string();
    nats_publish(&nats, "$KV.trimtab_defs.model.click-cta", entry.as_bytes());
    poll(WAIT, || {
        nodes[1]
            .stderr()
            .contains("a shared definition did not install")
            .then_some(())
    })
    .expect("the bad model should be refused and logged");
    let still = served_model(&nodes[1]).expect("n2 still serves a model");
    assert_eq!(still["version"], 1);
    assert_eq!(still["card"]["sha256"], made["card"]["sha256"]);
    assert!(!nodes[1].models().join("click-cta/v2.json").exists());
}

#[test]
fn a_node_stops_on_sigterm_while_nats_is_away() {
    // With the NATS server gone the lease release cannot reach it (the leases expire on
    // their own): a SIGTERM still stops the node, promptly and cleanly, with what it had
    // taken in checkpointed into its own store.
    let mut nats = Nats::start();
    let mut n = node(&nats, "n1");
    settled(&[&n]);
    n.post_ok(
        WRITE_KEY,
        vec![for_user(page_view(&eid("pv"), "/a"), "orphan")],
    );
    nats.stop();
    poll(WAIT, || {
        (n.get("/readyz", None).status == 503).then_some(())
    })
    .expect("readyz still 200 with NATS gone");
    let t = std::time::Instant::now();
    n.sigterm();
    let st = n.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "the node did not stop within 30 s of SIGTERM\n{}",
            n.stderr()
        )
    });
    assert!(st.success(), "{st}\n{}", n.stderr());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        t.elapsed()
    );
    let err = n.stderr();
    assert!(err.contains("left without giving the leases back"), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
}
