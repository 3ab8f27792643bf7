//! Unit tests of the pure decision code: a fixed clock, the step's in-memory output, real
//! (temp-dir) rules, experiments and bandits. Caps, precedence, attribution, and the journal
//! replaying to the same state.

use crate::experiments::def::Definition;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::config::{DeliveryConfig, SlotCaps};
use crate::experiments::def::ExperimentDef;
use trimtab_rules::RuleLimits;
use trimtab_store::Store;
use trimtab_wire::{Consent, Context, Phase, Props};

/// A fixed instant (2026-11-02 10:00 UTC) and one UTC day.
const T0: i64 = 1_793_613_600_000;
const DAY: i64 = 86_400_000;

/// A rule asking for a fresh variant on every custom event named "go".
const EVERY_GO: &str = r#"
if event.type == "custom" && event.props.name == "go" {
    adjust("s", "v" + event.props.n, #{ n: event.props.n });
}"#;

struct World {
    _dir: tempfile::TempDir,
    features: FeatureConfig,
    delivery: DeliveryConfig,
    rules: Rules,
    experiments: Experiments,
    bandits: Bandits,
    models: Arc<Models>,
    metrics: Arc<Metrics>,
    _learner: Option<(
        std::thread::JoinHandle<()>,
        crossbeam_channel::Sender<crate::bandits::learner::LearnMsg>,
    )>,
}

impl World {
    fn new(rules: &[(&str, &str)], holdout: f64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let rdir = dir.path().join("rules");
        std::fs::create_dir_all(&rdir).unwrap();
        for (name, src) in rules {
            std::fs::write(rdir.join(format!("{name}.rhai")), src).unwrap();
        }
        let rules = Rules::load(&rdir, RuleLimits::default()).unwrap();
        let experiments =
            Experiments::load(&dir.path().join("experiments"), rules.clone(), holdout).unwrap();
        let bandits = Bandits::load(&dir.path().join("bandits")).unwrap();
        World {
            _dir: dir,
            features: FeatureConfig::default(),
            delivery: DeliveryConfig::default(),
            rules,
            experiments,
            bandits,
            models: Arc::new(Models::new()),
            metrics: Arc::new(Metrics::new()),
            _learner: None,
        }
    }

    /// Starts the bandit learner (it publishes the policies `covers`/`choose` read).
    fn with_bandit(mut self, slot: &str, toml: &str) -> World {
        let store = Arc::new(Store::open(&self._dir.path().join("data")).unwrap());
        let l = crate::bandits::learner::start(
            &self.bandits,
            store,
            self.metrics.clone(),
            &crate::health::Health::new(),
        )
        .unwrap();
        self._learner = Some(l);
        let def = crate::bandits::def::BanditDef::from_toml(slot, toml).unwrap();
        self.bandits.put(def).unwrap();
        assert!(self.bandits.covers(slot), "bandit {slot} not live");
        self
    }

    fn with_experiment(self, id: &str, toml: &str) -> World {
        self.experiments
            .put(ExperimentDef::from_toml(id, toml).unwrap())
            .unwrap();
        self
    }

    fn snap(&self) -> Snapshot<'_> {
        Snapshot {
            features: &self.features,
            delivery: &self.delivery,
            rules: &self.rules,
            experiments: &self.experiments,
            bandits: &self.bandits,
            segments: None,
            models: &self.models,
            metrics: &self.metrics,
        }
    }
}

/// One user driven through `step` the way a shard does, keeping the journal of every seq.
struct Driver {
    key: UserKey,
    state: UserState,
    cache: LearnCache,
    /// (seq, event, journal) as the shard would store them.
    log: Vec<(u64, Option<Event>, Option<JournalRecord>)>,
    session: String,
    n: u64,
}

impl Driver {
    fn new(k: u8) -> Driver {
        Driver {
            key: UserKey([k; 16]),
            state: UserState::default(),
            cache: LearnCache::default(),
            log: Vec::new(),
            session: "s1".into(),
            n: 0,
        }
    }

    fn event(&mut self, props: Props, target: Option<&str>, at: i64) -> Event {
        self.n += 1;
        Event {
            id: format!("e{}", self.n),
            session: self.session.clone(),
            ts: at,
            received_ms: at,
            target: target.map(str::to_string),
            props,
            context: Context::default(),
            consent: Consent {
                analytics: true,
                personalization: true,
            },
        }
    }

    /// A page view of `path` at `at`, sent.
    fn page_view(&mut self, w: &World, path: &str, at: i64) -> Out {
        let props = Props::PageView {
            path: path.into(),
            title: None,
        };
        let ev = self.event(props, None, at);
        self.send(w, ev, at)
    }

    fn go(&mut self, w: &World, n: u64, at: i64) -> Out {
        let props = BTreeMap::from([("n".into(), trimtab_wire::Scalar::Int(n as i64))]);
        let ev = self.event(
            Props::Custom {
                name: "go".into(),
                props,
            },
            None,
            at,
        );
        self.send(w, ev, at)
    }

    fn send(&mut self, w: &World, ev: Event, at: i64) -> Out {
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        let mut out = Out::default();
        let ev = Arc::new(ev);
        let input = Input::Event(&ev);
        step(
            &w.snap(),
            &self.key,
            &mut self.state,
            &mut self.cache,
            &mut NoRecords,
            input,
            at,
            &mut out,
        );
        let j = out.changed_state().then(|| JournalRecord {
            at,
            cause: Cause::Event,
            effects: out.effects.clone(),
        });
        self.log.push((seq, Some((*ev).clone()), j));
        out
    }

    fn tick(&mut self, w: &World, at: i64) -> Out {
        let seq = self.state.next_seq;
        let mut out = Out::default();
        step(
            &w.snap(),
            &self.key,
            &mut self.state,
            &mut self.cache,
            &mut NoRecords,
            Input::Tick,
            at,
            &mut out,
        );
        if out.changed_state() {
            self.state.next_seq += 1;
            self.log.push((
                seq,
                None,
                Some(JournalRecord {
                    at,
                    cause: Cause::Tick,
                    effects: out.effects.clone(),
                }),
            ));
        }
        out
    }

    fn decide(&mut self, w: &World, slot: &str, at: i64) -> (Decision, Out) {
        let seq = self.state.next_seq;
        let mut out = Out::default();
        let input = Input::Decide {
            slot,
            candidates: &[],
        };
        step(
            &w.snap(),
            &self.key,
            &mut self.state,
            &mut self.cache,
            &mut NoRecords,
            input,
            at,
            &mut out,
        );
        if out.changed_state() {
            self.state.next_seq += 1;
            self.log.push((
                seq,
                None,
                Some(JournalRecord {
                    at,
                    cause: Cause::Decide,
                    effects: out.effects.clone(),
                }),
            ));
        }
        (out.answer.clone().expect("decide answers"), out)
    }

    /// The state rebuilt from the log alone (what recovery computes).
    fn replayed(&self, w: &World) -> UserState {
        let mut st = UserState::default();
        for (seq, ev, j) in &self.log {
            journal::replay(&mut st, &w.features, *seq, ev.as_ref(), j.as_ref());
        }
        st
    }
}

fn variants(out: &Out) -> Vec<&str> {
    out.decisions.iter().map(|d| d.variant.as_str()).collect()
}

#[test]
fn frequency_caps_per_session_and_per_utc_day() {
    let mut w = World::new(&[("every", EVERY_GO)], 0.0);
    w.delivery.slots.insert(
        "s".into(),
        SlotCaps {
            cap_per_session: Some(2),
            cap_per_user: Some(3),
        },
    );
    let mut u = Driver::new(1);
    assert_eq!(variants(&u.go(&w, 1, T0)), ["v1"]);
    assert_eq!(variants(&u.go(&w, 2, T0 + 1)), ["v2"]);
    let capped = u.go(&w, 3, T0 + 2);
    assert!(
        capped.decisions.is_empty(),
        "third in the session must be capped"
    );
    assert!(
        capped.effects.is_empty(),
        "a capped request changes nothing"
    );
    assert_eq!(
        w.metrics.adjustments_capped.with_label_values(&["s"]).get(),
        1
    );
    // A new session resets the session cap, not the day cap (3 per day).
    u.session = "s2".into();
    assert_eq!(variants(&u.go(&w, 4, T0 + 3)), ["v4"]);
    assert!(
        u.go(&w, 5, T0 + 4).decisions.is_empty(),
        "day cap of 3 reached"
    );
    // The next UTC day starts from zero.
    assert_eq!(variants(&u.go(&w, 6, T0 + DAY)), ["v6"]);
    assert_eq!(u.state.caps.get("s").unwrap().total, 4);
    assert_eq!(u.state.cap_counts("s", T0 + DAY), (2, 1));
    assert_eq!(u.replayed(&w), u.state);
}

#[test]
fn unlimited_caps_and_the_same_variant_is_a_noop() {
    let always = r#"if event.type == "custom" { adjust("s", "same", #{ k: event.props.k }); }"#;
    let w = World::new(&[("always", always)], 0.0);
    let mut u = Driver::new(2);
    let ev = |u: &mut Driver, k: &str, at| {
        let props = BTreeMap::from([("k".into(), trimtab_wire::Scalar::Str(k.into()))]);
        u.event(
            Props::Custom {
                name: "x".into(),
                props,
            },
            None,
            at,
        )
    };
    let e = ev(&mut u, "a", T0);
    assert_eq!(variants(&u.send(&w, e, T0)), ["same"]);
    let e = ev(&mut u, "a", T0 + 1);
    assert!(
        u.send(&w, e, T0 + 1).decisions.is_empty(),
        "already showing exactly this"
    );
    // New params are a change: pushed.
    let e = ev(&mut u, "b", T0 + 2);
    assert_eq!(variants(&u.send(&w, e, T0 + 2)), ["same"]);
    // A page view renders the defaults again: the same request is new.
    assert!(u.page_view(&w, "/p", T0 + 3).decisions.is_empty());
    let e = ev(&mut u, "b", T0 + 4);
    assert_eq!(variants(&u.send(&w, e, T0 + 4)), ["same"]);
    assert_eq!(u.state.caps.get("s").unwrap().total, 3);
    assert_eq!(u.replayed(&w), u.state);
}

#[test]
fn no_personalization_consent_no_decision_and_holdout_gets_nothing() {
    let w = World::new(&[("every", EVERY_GO)], 0.0);
    let mut u = Driver::new(3);
    let mut ev = u.event(
        Props::Custom {
            name: "go".into(),
            props: BTreeMap::from([("n".into(), trimtab_wire::Scalar::Int(1))]),
        },
        None,
        T0,
    );
    ev.consent.personalization = false;
    let out = u.send(&w, ev, T0);
    assert!(out.decisions.is_empty() && out.effects.is_empty());
    let (d, _) = u.decide(&w, "s", T0 + 1);
    assert_eq!(d.source, "default");

    // Everyone in the global holdout: rules still run, nothing is admitted.
    let w = World::new(&[("every", EVERY_GO)], 1.0);
    let mut u = Driver::new(4);
    let out = u.go(&w, 1, T0);
    assert!(out.decisions.is_empty());
    assert!(out.effects.contains(&Effect::Holdout(true)));
    assert_eq!(u.state.holdout, Some(true));
    assert_eq!(u.replayed(&w), u.state);
}

const BANDIT: &str = "candidates = [\"control\", \"b1\", \"b2\"]\npolicy = \"uniform\"\nreward = \"click\"\nwindow_ms = 60000\n";

#[test]
fn precedence_experiment_over_bandit_over_rule() {
    let rule = r#"if event.type == "custom" { adjust("s", "from-rule", #{ who: "rule" }); }"#;
    // A bandit on s: it chooses among its candidates, once per page.
    let w = World::new(&[("r", rule)], 0.0).with_bandit("s", BANDIT);
    let mut u = Driver::new(5);
    let out = u.go(&w, 1, T0);
    let d = &out.decisions[0];
    assert_eq!(d.source, "bandit");
    assert!(
        ["control", "b1", "b2"].contains(&d.variant.as_str()),
        "{d:?}"
    );
    assert!((d.propensity - 1.0 / 3.0).abs() < 1e-9, "{}", d.propensity);
    assert_eq!(out.learn.len(), 1, "the bandit decision is logged");
    assert!(matches!(out.notes[0], Note::Chosen { .. }));
    assert!(
        u.go(&w, 2, T0 + 1).decisions.is_empty(),
        "once per page view"
    );
    u.page_view(&w, "/next", T0 + 2);
    assert_eq!(
        u.go(&w, 3, T0 + 3).decisions[0].source,
        "bandit",
        "a new page decides again"
    );

    // An experiment on the same slot wins over the bandit; its params override the rule's.
    let w = w.with_experiment(
        "exp",
        "slot = \"s\"\nprimary_metric = \"conversion\"\nvariants = [{name = \"arm-a\", params = {who = \"exp-a\"}}, {name = \"arm-b\", params = {who = \"exp-b\"}}]\n",
    );
    let mut u = Driver::new(6);
    let out = u.go(&w, 1, T0);
    let d = &out.decisions[0];
    // Asked for by a rule, decided by the experiment.
    assert_eq!(
        (d.source.as_str(), d.rule.as_deref()),
        ("rule", Some("r")),
        "{d:?}"
    );
    assert_eq!(
        (d.experiment.as_deref(), d.arm.as_deref()),
        (Some("exp"), Some(d.variant.as_str()))
    );
    assert_eq!(
        d.params["who"],
        format!("exp-{}", &d.variant[4..]),
        "the arm's params win"
    );
    assert_eq!(d.propensity, 0.5);
    assert!(out.learn.is_empty(), "no bandit record under an experiment");
    assert_eq!(
        u.state.experiments.get("exp").unwrap().decisions.back(),
        Some(&d.id)
    );
    // A slot no experiment or bandit covers: the rule's own variant.
    let other = r#"if event.type == "custom" { adjust("t", "own"); }"#;
    let w2 = World::new(&[("o", other)], 0.0);
    let mut u = Driver::new(7);
    let d = &u.go(&w2, 1, T0).decisions[0];
    assert_eq!(
        (d.source.as_str(), d.variant.as_str(), d.rule.as_deref()),
        ("rule", "own", Some("o"))
    );
}

#[test]
fn decide_answers_new_then_current_then_default() {
    let first_paint =
        r#"if event.type == "decide" && event.props.slot == "cta" { adjust("cta", "morning"); }"#;
    let w = World::new(&[("fp", first_paint)], 0.0);
    let mut u = Driver::new(8);
    // Before any event there is no consent: the page default.
    assert_eq!(u.decide(&w, "cta", T0 - 10).0.source, "default");
    u.page_view(&w, "/", T0 - 5);
    let (d, out) = u.decide(&w, "cta", T0);
    assert_eq!((d.source.as_str(), d.variant.as_str()), ("rule", "morning"));
    assert_eq!(out.decisions.len(), 1, "a new decision is stored");
    let (again, out) = u.decide(&w, "cta", T0 + 1);
    assert_eq!(
        (again.source.as_str(), again.id.as_str()),
        ("current", d.id.as_str())
    );
    assert!(out.decisions.is_empty());
    let (other, _) = u.decide(&w, "other", T0 + 2);
    assert_eq!(
        (other.source.as_str(), other.variant.as_str()),
        ("default", "default")
    );
    assert_eq!(u.replayed(&w), u.state);
}

#[test]
fn attribution_of_clicks_conversions_and_dwell_first_only() {
    let rule = r#"if event.type == "custom" { adjust("s", "x"); }"#;
    let w = World::new(&[("r", rule)], 0.0).with_bandit(
        "s",
        "candidates = [\"control\", \"b1\"]\npolicy = \"uniform\"\nreward = \"click\"\nwindow_ms = 60000\ndwell_ms = 1000\n",
    );
    let mut u = Driver::new(9);
    let out = u.go(&w, 1, T0);
    let id = out.decisions[0].id.clone();
    let idb = Decision::id_bytes(&id).unwrap();
    // A click citing the decision: a reward, once.
    let click = u.event(
        Props::Click {
            decision: Some(id.clone()),
        },
        Some("s"),
        T0 + 10,
    );
    let out = u.send(&w, click, T0 + 10);
    assert_eq!(out.learn.len(), 1);
    assert_eq!(
        out.notes,
        vec![Note::Reward {
            id: idb,
            slot: "s".into(),
            kind: RewardKind::Click
        }]
    );
    assert!(out.learn[0].1.has(RewardKind::Click));
    let click = u.event(
        Props::Click {
            decision: Some(id.clone()),
        },
        Some("s"),
        T0 + 20,
    );
    assert!(
        u.send(&w, click, T0 + 20).learn.is_empty(),
        "only the first click counts"
    );
    // A conversion without an id while the slot shows the decision.
    let conv = u.event(
        Props::Conversion {
            name: Some("buy".into()),
            value: None,
            decision: None,
        },
        None,
        T0 + 30,
    );
    let out = u.send(&w, conv, T0 + 30);
    assert_eq!(
        out.notes,
        vec![Note::Reward {
            id: idb,
            slot: "s".into(),
            kind: RewardKind::Conversion
        }]
    );
    // A finished dwell on the slot's element: only when long enough.
    let short = u.event(
        Props::Dwell {
            phase: Phase::End,
            duration_ms: 500,
            visible_ratio: None,
        },
        Some("s"),
        T0 + 40,
    );
    assert!(u.send(&w, short, T0 + 40).notes.is_empty());
    let long = u.event(
        Props::Dwell {
            phase: Phase::End,
            duration_ms: 1500,
            visible_ratio: None,
        },
        Some("s"),
        T0 + 50,
    );
    assert_eq!(u.send(&w, long, T0 + 50).notes.len(), 1);
    // Outside the window: nothing.
    let mut v = Driver::new(10);
    let id = v.go(&w, 1, T0).decisions[0].id.clone();
    let late = v.event(Props::Click { decision: Some(id) }, Some("s"), T0 + 61_000);
    assert!(v.send(&w, late, T0 + 61_000).notes.is_empty());
    // Not a bandit decision (unknown id): nothing.
    let stray = v.event(
        Props::Click {
            decision: Some("00".repeat(16)),
        },
        Some("s"),
        T0 + 70,
    );
    assert!(v.send(&w, stray, T0 + 70).notes.is_empty());
}

#[test]
fn a_long_hover_fires_on_a_tick_and_the_journal_replays_it() {
    let hover = include_str!("../../../../scripts/hover_review.rhai");
    let w = World::new(&[("hover_review", hover)], 0.0);
    let mut u = Driver::new(11);
    u.page_view(&w, "/shop", T0 - 100);
    let start = u.event(
        Props::Hover {
            phase: Phase::Start,
            duration_ms: 0,
        },
        Some("product-image"),
        T0,
    );
    assert!(u.send(&w, start, T0).decisions.is_empty());
    assert!(
        u.tick(&w, T0 + 1_000).decisions.is_empty(),
        "1 s is not 3 s"
    );
    let beat = u.event(
        Props::Hover {
            phase: Phase::Heartbeat,
            duration_ms: 2_000,
        },
        Some("product-image"),
        T0 + 2_000,
    );
    assert!(u.send(&w, beat, T0 + 2_000).decisions.is_empty());
    // Between heartbeats, the server's timer sees the hover pass 3 s.
    let out = u.tick(&w, T0 + 3_100);
    assert_eq!(variants(&out), ["review"]);
    assert_eq!(u.state.adjustments.get("product-detail").unwrap(), "review");
    // Heartbeats stop: the hover ends on a tick after the timeout.
    let out = u.tick(&w, T0 + 2_000 + w.features.ongoing_timeout_ms + 1);
    assert!(out.expired);
    assert!(!u.state.has_ongoing());
    assert_eq!(u.replayed(&w), u.state);
}

/// What a random user does next.
#[derive(Debug, Clone)]
enum Op {
    PageView(u8),
    Scroll(f64),
    Hover(u8, u8),
    Dwell(u8, u8, u64),
    Click(u8, bool),
    Go(u64),
    Impression,
    Conversion(bool),
    Visibility(bool),
    NewSession,
    Tick,
    Decide(u8),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0u8..3).prop_map(Op::PageView),
        (0.0f64..=100.0).prop_map(Op::Scroll),
        (0u8..3, 0u8..3).prop_map(|(t, p)| Op::Hover(t, p)),
        (0u8..3, 0u8..3, 0u64..5_000).prop_map(|(t, p, d)| Op::Dwell(t, p, d)),
        (0u8..3, any::<bool>()).prop_map(|(t, d)| Op::Click(t, d)),
        (0u64..6).prop_map(Op::Go),
        Just(Op::Impression),
        any::<bool>().prop_map(Op::Conversion),
        any::<bool>().prop_map(Op::Visibility),
        Just(Op::NewSession),
        Just(Op::Tick),
        (0u8..3).prop_map(Op::Decide),
    ]
}

const TARGETS: [&str; 3] = ["product-image", "cta", "pricing"];
const PAGES: [&str; 3] = ["/article/a", "/shop", "/article/b"];
const SLOTS: [&str; 3] = ["s", "offer", "cta"];

/// Every shipped example rule, one that fires on every "go", an experiment on slot "s" with
/// metrics, tight caps: most kinds of effect happen in a random session.
fn busy_world() -> World {
    let mut w = World::new(
        &[
            ("every", EVERY_GO),
            ("scroll_offer", include_str!("../../../../scripts/scroll_offer.rhai")),
            ("hover_review", include_str!("../../../../scripts/hover_review.rhai")),
            ("cta_by_context", include_str!("../../../../scripts/cta_by_context.rhai")),
        ],
        0.2,
    )
    .with_experiment(
        "exp",
        "slot = \"s\"\nprimary_metric = \"clicks\"\nvariants = [{name = \"a\"}, {name = \"b\"}]\n[metrics.clicks]\nkind = \"mean\"\nevent = \"click\"\n",
    );
    w.delivery.cap_per_session = 3;
    w.delivery.cap_per_user = 5;
    w
}

impl Driver {
    fn run(&mut self, w: &World, op: &Op, at: i64) {
        let t = |i: &u8| Some(TARGETS[*i as usize % 3]);
        let phase = |p: &u8| [Phase::Start, Phase::Heartbeat, Phase::End][*p as usize % 3];
        let props = match op {
            Op::Tick => {
                self.tick(w, at);
                return;
            }
            Op::Decide(s) => {
                self.decide(w, SLOTS[*s as usize % 3], at);
                return;
            }
            Op::NewSession => {
                self.session = format!("s{}", self.n);
                return;
            }
            Op::Go(n) => {
                self.go(w, *n, at);
                return;
            }
            Op::PageView(p) => (
                Props::PageView {
                    path: PAGES[*p as usize % 3].into(),
                    title: None,
                },
                None,
            ),
            Op::Scroll(d) => (
                Props::Scroll {
                    depth: *d,
                    max_depth: None,
                    velocity: None,
                },
                None,
            ),
            Op::Hover(i, p) => (
                Props::Hover {
                    phase: phase(p),
                    duration_ms: 300,
                },
                t(i),
            ),
            Op::Dwell(i, p, d) => (
                Props::Dwell {
                    phase: phase(p),
                    duration_ms: *d,
                    visible_ratio: None,
                },
                t(i),
            ),
            Op::Click(i, cite) => {
                let decision = cite
                    .then(|| self.state.shown.get("s").map(|(id, _)| id.clone()))
                    .flatten();
                (Props::Click { decision }, t(i))
            }
            Op::Impression => {
                let Some((id, _)) = self.state.shown.get("s").cloned() else {
                    return;
                };
                let variant = self.state.adjustments.get("s").unwrap().to_string();
                (
                    Props::Impression {
                        slot: "s".into(),
                        variant,
                        decision: Some(id),
                    },
                    Some("s"),
                )
            }
            Op::Conversion(v) => (
                Props::Conversion {
                    name: Some("buy".into()),
                    value: v.then_some(9.5),
                    decision: None,
                },
                None,
            ),
            Op::Visibility(v) => (Props::Visibility { visible: *v }, None),
        };
        let mut ev = self.event(props.0, props.1, at);
        ev.context.hour = Some(((at / 3_600_000) % 24) as u8);
        self.send(w, ev, at);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// A crash at any point loses nothing the log holds: the last checkpoint before the crash
    /// (through its encoding, as stored) plus the log past it replays to exactly the state the
    /// process had — caps, shown slots, experiment assignments, exposures and metrics included.
    #[test]
    fn checkpoint_plus_replay_equals_the_state_without_a_crash(
        ops in proptest::collection::vec((op(), 1i64..4_000), 1..120),
        crash in 0usize..120,
        user in 0u8..=255,
    ) {
        let w = busy_world();
        let mut u = Driver::new(user);
        let mut at = T0 + 7 * 3_600_000;
        let mut checkpoint = None;
        for (i, (o, dt)) in ops.iter().enumerate() {
            if i == crash {
                checkpoint = Some(u.state.encode());
            }
            at += dt;
            u.run(&w, o, at);
        }
        let ck = checkpoint.unwrap_or_else(|| UserState::default().encode());
        let mut st = UserState::decode(&ck).unwrap();
        let head = st.next_seq;
        for (seq, ev, j) in u.log.iter().filter(|(s, _, _)| *s >= head) {
            journal::replay(&mut st, &w.features, *seq, ev.as_ref(), j.as_ref());
        }
        proptest::prop_assert_eq!(&st, &u.state);
        // And a replay from nothing (no checkpoint at all) agrees too.
        proptest::prop_assert_eq!(&u.replayed(&w), &u.state);
    }
}

// ---------------------------------------------------------------- remembered rule runs

/// A rule that makes every kind of read `rules::memo` records (view fields, map operations on
/// the views, each helper, `experiment`, `predict`), and whose outcome depends on them.
const READS_ALL: &str = r#"
let score = 0;
if user.showing("s") == "a" { score += 1; }
if user.experiment("exp") == "b" { score += 2; }
if experiment("exp") == "a" { score += 4; }
if user.hover_ms("cta") > 500 { score += 8; }
if user.hovering_ms("product-image") > 0 { score += 16; }
if user.hover_count("pricing") >= 2 { score += 32; }
if user.dwell_ms("cta") > 1000 { score += 64; }
if user.clicks("cta") > 0 { score += 128; }
if user.seen("pricing") { score += 256; }
if user.seq_contains("click:cta") { score += 512; }
if user.seq_ends_with(["hover:cta", "click:cta"]) { score += 1024; }
if user.seq_count("hover") > 2 { score += 2048; }
if user.seq_count_last(4, "scroll") > 1 { score += 4096; }
if user.hour() >= 12 && !user.is_mobile() { score += 8192; }
if predict("click", "s", "a") > 0.5 { score += 16384; }
if "scroll" in user && user.len() > 3 && user.keys().len() == user.len() { score += 1; }
if "props" in event && event.len() == event.keys().len() { score += 1; }
let kind = event.type;
let params = #{ score: score, kind: kind, page: user["page"] ?? "", target: event.target };
if kind == "custom" {
    params.last = user.seq_last(2);
    params.props = event.props;
    params.sessions = user.to_map().sessions;
    params.ts = event.to_map().ts;
}
if kind == "scroll" && user.scroll.depth > 50.0 { params.deep = true; }
adjust("reads", "v" + score % 5, params);
"#;

/// The shipped rules, `READS_ALL` and the experiment of `busy_world`, on one rules directory.
fn memo_world() -> World {
    World::new(
        &[
            ("every", EVERY_GO),
            ("reads_all", READS_ALL),
            ("scroll_offer", include_str!("../../../../scripts/scroll_offer.rhai")),
            ("hover_review", include_str!("../../../../scripts/hover_review.rhai")),
            ("cta_by_context", include_str!("../../../../scripts/cta_by_context.rhai")),
        ],
        0.2,
    )
    .with_experiment(
        "exp",
        "slot = \"s\"\nprimary_metric = \"clicks\"\nvariants = [{name = \"a\"}, {name = \"b\"}]\n[metrics.clicks]\nkind = \"mean\"\nevent = \"click\"\n",
    )
}

/// The world's rules directory loaded once more, remembering runs or not.
fn rules_of(w: &World, memo: bool) -> Rules {
    let limits = RuleLimits {
        memo,
        ..RuleLimits::default()
    };
    Rules::load(&w._dir.path().join("rules"), limits).unwrap()
}

/// Evaluates both rule sets on `u`'s state as it is now, for its last real event and for a
/// tick and a first-paint decide, and checks they ask for exactly the same adjustments.
fn evaluate_both(on: &Rules, off: &Rules, u: &Driver, at: i64) -> Result<(), String> {
    let state = Arc::new(u.state.clone());
    let mut events = vec![
        view::EventData::Synthetic {
            kind: "tick",
            session: u.session.clone(),
            ts: at,
            props: rhai::Map::new(),
        },
        view::EventData::Synthetic {
            kind: "decide",
            session: u.session.clone(),
            ts: at,
            props: [("slot".into(), rhai::Dynamic::from("cta".to_string()))]
                .into_iter()
                .collect(),
        },
    ];
    if let Some((_, Some(ev), _)) = u.log.last() {
        events.push(view::EventData::Real(Arc::new(ev.clone())));
    }
    for data in events {
        let kind = match &data {
            view::EventData::Real(ev) => ev.kind().as_str(),
            view::EventData::Synthetic { kind, .. } => kind,
        };
        let event = view::event_view(data);
        let input = RuleInput {
            user: view::user_view(&u.key, state.clone(), at),
            event,
            now_ms: at,
            kind: Some(kind),
            scorer: None,
        };
        let (a, b) = (on.evaluate(&input), off.evaluate(&input));
        if a != b {
            return Err(format!("{kind}: remembered {a:?} != ran {b:?}"));
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// A remembered run replays exactly what running the rule gives: three users of one
    /// random session mix share every rule's tree, and each state they pass through is
    /// evaluated with runs remembered and without.
    #[test]
    fn remembered_rule_runs_decide_exactly_like_running_the_rule(
        ops in proptest::collection::vec((0usize..3, op(), 1i64..4_000), 1..150),
    ) {
        let w = memo_world();
        let (on, off) = (rules_of(&w, true), rules_of(&w, false));
        let mut users: Vec<Driver> = (0..3).map(|i| Driver::new(10 + i)).collect();
        let mut at = T0 + 7 * 3_600_000;
        for (who, o, dt) in &ops {
            at += dt;
            users[*who].run(&w, o, at);
            let r = evaluate_both(&on, &off, &users[*who], at);
            proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}

/// A small deterministic stream of operations (a linear congruential generator over `op`'s
/// kinds), for tests that need the same mix every time.
fn scripted_ops(n: usize, mut seed: u64) -> Vec<(usize, Op, i64)> {
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        seed >> 33
    };
    (0..n)
        .map(|_| {
            let (a, b, c) = (next() as u8, next() as u8, next());
            let op = match next() % 10 {
                0 => Op::PageView(a),
                1 => Op::Scroll((c % 101) as f64),
                2 | 3 => Op::Hover(a, b),
                4 => Op::Dwell(a, b, c % 5_000),
                5 => Op::Click(a, b % 2 == 0),
                6 => Op::Tick,
                7 => Op::Decide(a),
                8 => Op::Visibility(b % 2 == 0),
                _ => Op::Go(c % 6),
            };
            ((next() % 3) as usize, op, 1 + (c % 4_000) as i64)
        })
        .collect()
}

#[test]
fn rule_runs_are_remembered_and_replayed_across_users() {
    let w = memo_world();
    let (on, off) = (rules_of(&w, true), rules_of(&w, false));
    let mut users: Vec<Driver> = (0..3).map(|i| Driver::new(20 + i)).collect();
    let mut at = T0 + 19 * 3_600_000; // the evening: cta_by_context's first branch
    for (who, o, dt) in scripted_ops(600, 7) {
        at += dt;
        users[who].run(&w, &o, at);
        evaluate_both(&on, &off, &users[who], at).unwrap();
    }
    for name in ["reads_all", "hover_review", "cta_by_context"] {
        let (a, b) = (on.status(name).unwrap(), off.status(name).unwrap());
        assert_eq!(a.runs, b.runs, "{name}: every run counts, replayed or not");
        assert_eq!(a.adjustments, b.adjustments, "{name}");
        assert_eq!(b.replayed, 0, "{name}: nothing is replayed with memo off");
        // reads_all reads everything, so few of its situations recur; the shipped rules
        // return early on few-valued reads and mostly replay.
        let least = if name == "reads_all" {
            a.runs / 20
        } else {
            a.runs / 2
        };
        assert!(
            a.replayed > least,
            "{name}: {} of {} runs replayed",
            a.replayed,
            a.runs
        );
    }
}

#[test]
fn rules_that_read_the_clock_or_log_are_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let rules = [
        (
            "clock",
            "if now_ms > 0 && user.showing(\"x\") == \"\" { adjust(\"x\", \"a\"); }",
        ),
        (
            "logs",
            "log(\"seen \" + event.type); if user.showing(\"y\") == \"\" { adjust(\"y\", \"b\"); }",
        ),
        (
            "plain",
            "if user.showing(\"z\") == \"\" { adjust(\"z\", \"c\"); }",
        ),
    ];
    for (name, src) in rules {
        std::fs::write(dir.path().join(format!("{name}.rhai")), src).unwrap();
    }
    let rules = Rules::load(dir.path(), RuleLimits::default()).unwrap();
    let mut u = Driver::new(3);
    for i in 0..5 {
        let ev = u.event(Props::Visibility { visible: true }, None, T0 + i);
        let input = RuleInput {
            user: view::user_view(&u.key, Arc::new(u.state.clone()), T0 + i),
            event: view::event_view(view::EventData::Real(Arc::new(ev))),
            now_ms: T0 + i,
            kind: Some("visibility"),
            scorer: None,
        };
        let out = rules.evaluate(&input);
        assert_eq!(out.len(), 3, "every rule asks every time: {out:?}");
    }
    let st = |n: &str| rules.status(n).unwrap();
    assert_eq!((st("clock").runs, st("clock").replayed), (5, 0));
    assert_eq!((st("logs").runs, st("logs").replayed), (5, 0));
    assert_eq!((st("plain").runs, st("plain").replayed), (5, 4));
    assert_eq!(st("plain").adjustments, 5);
}

/// The field lists the rule checker warns against (`trimtab_rules::view`) are the layout the
/// view builds: every top-level field exists, and the fixed maps have exactly those keys.
#[test]
fn the_checkers_field_lists_match_the_user_view() {
    use trimtab_rules::view::UserSource;
    let v = view::StateView {
        key: UserKey([1; 16]),
        state: Arc::new(UserState::default()),
        now_ms: 0,
    };
    for f in trimtab_rules::view::USER_FIELDS {
        assert!(!v.field(f).is_unit(), "user.{f} is not built");
    }
    assert!(v.field("no_such_field").is_unit());
    for (name, keys) in trimtab_rules::view::USER_MAPS {
        let inner = v.field(name).cast::<rhai::Map>();
        let mut got: Vec<&str> = inner.keys().map(|k| k.as_str()).collect();
        got.sort_unstable();
        let mut want = keys.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "user.{name}");
    }
}

/// Evaluates `rules` for `u`'s state and `ev`, with the views the engine passes (`views`) or
/// with the fully built plain maps (`!views`).
fn evaluate_as(rules: &Rules, u: &Driver, ev: &Event, at: i64, views: bool) -> Vec<AdjustRequest> {
    let (user, event) = if views {
        (
            view::user_view(&u.key, Arc::new(u.state.clone()), at),
            view::event_view(view::EventData::Real(Arc::new(ev.clone()))),
        )
    } else {
        (
            rhai::Dynamic::from_map(view::user_map(&u.key, &u.state, at)),
            rhai::Dynamic::from_map(view::event_map(ev)),
        )
    };
    rules.evaluate(&RuleInput {
        user,
        event,
        now_ms: at,
        kind: Some(ev.kind().as_str()),
        scorer: None,
    })
}

/// A user who scrolled: the objects `user.scroll`, … and `event.props` have values.
fn scrolled_user(w: &World) -> (Driver, Event) {
    let mut u = Driver::new(5);
    u.page_view(w, "/article/1", T0);
    let ev = u.event(
        Props::Scroll {
            depth: 42.5,
            max_depth: Some(60.0),
            velocity: Some(1.5),
        },
        None,
        T0 + 700,
    );
    u.send(w, ev.clone(), T0 + 700);
    (u, ev)
}

/// `user.scroll`, `event.props`, … read as views answer every map function that does not
/// change a map exactly as the plain maps do (the same script, run both ways).
#[test]
fn objects_read_as_views_behave_like_the_plain_maps() {
    const PROBE: &str = r#"
let s = user.scroll;
let p = event.props;
let out = [];
out.push(type_of(s)); out.push(s.depth); out.push(s["max_depth"]); out.push(s.missing);
out.push(s?.velocity); out.push(s["missing"] ?? "none"); out.push(s.keys()); out.push(s.values());
out.push(s.len()); out.push(s.is_empty()); out.push("depth" in s); out.push("x" in s);
out.push(s.contains("direction")); out.push(s.get("velocity")); out.push(s.to_json());
out.push(`${s}`); out.push(s.to_string()); out.push(s.to_debug());
out.push(s == user.scroll); out.push(s != user.scroll); out.push(s == #{}); out.push(s != #{});
out.push(#{} == s); out.push(s == user.mouse);
out.push((s + #{extra: 1}).len()); out.push((#{extra: 1} + s).extra); out.push((s + user.mouse).len());
out.push(p.depth); out.push(p.keys()); out.push(p.max_depth); out.push(p.nothing);
out.push(user.signals.frustration); out.push(user.consent.personalization);
out.push(user.context.hour); out.push(user.mouse.speed); out.push(user["scroll"]["depth"]);
out.push(event["props"].velocity);
let params = #{ s: s, n: out.len() };
for i in 0..(out.len() + 3) / 4 {
    params["p" + i] = `${out.extract(i * 4, 4)}`;
}
adjust("probe", "v", params);
"#;
    let w = World::new(&[("probe", PROBE)], 0.0);
    let (u, ev) = scrolled_user(&w);
    let rules = rules_of(&w, true);
    let (viewed, plain) = (
        evaluate_as(&rules, &u, &ev, T0 + 800, true),
        evaluate_as(&rules, &u, &ev, T0 + 800, false),
    );
    assert_eq!(viewed.len(), 1, "{:?}", rules.status("probe"));
    assert_eq!(viewed, plain);
    assert!(viewed[0].params["p0"].contains("42.5"), "{viewed:?}");
    assert!(viewed[0].params["s"].contains("max_depth"), "{viewed:?}");
    let st = rules.status("probe").unwrap();
    assert_eq!((st.runs, st.failures), (2, 0), "{st:?}");
    assert_eq!(
        rules.reads_plain_maps("probe"),
        Some(false),
        "read as views"
    );
}

/// A rule that changes an object it read (which a view does not allow) runs again with plain
/// maps, keeps them from then on, and decides as it always did: no error is counted.
#[test]
fn a_rule_that_changes_an_object_it_read_runs_with_plain_maps() {
    const CHANGES: &str = r#"
let s = user.scroll;
s.depth = 99.0;
let big = user.signals.filter(|k, v| k == "frustration");
if s.depth > 90.0 && big.len() == 1 { adjust("x", "changed", #{ d: s.depth }); }
"#;
    let w = World::new(&[("changes", CHANGES)], 0.0);
    let (u, ev) = scrolled_user(&w);
    let rules = rules_of(&w, true);
    for i in 0..3 {
        let out = evaluate_as(&rules, &u, &ev, T0 + 800 + i, true);
        assert_eq!(out.len(), 1, "run {i}: {:?}", rules.status("changes"));
        assert_eq!(out[0].params["d"], "99.0");
    }
    let st = rules.status("changes").unwrap();
    assert_eq!((st.runs, st.failures), (3, 0), "{st:?}");
    assert_eq!(rules.reads_plain_maps("changes"), Some(true));
    // A rule that fails with plain maps as well keeps failing, as it did before views.
    let w = World::new(&[("broken", "let s = user.scroll; s.nothing();")], 0.0);
    let (u, ev) = scrolled_user(&w);
    let rules = rules_of(&w, true);
    assert!(evaluate_as(&rules, &u, &ev, T0 + 800, true).is_empty());
    let st = rules.status("broken").unwrap();
    assert_eq!((st.runs, st.failures), (1, 1), "{st:?}");
    assert_eq!(rules.reads_plain_maps("broken"), Some(false));
}

/// A rule that reads one key of an object is remembered by that key: its runs replay while
/// the scroll's other values (its velocity) differ from run to run. The shipped scroll_offer
/// asks `on_page("/article")` and `scrolled_past(75)`, so neither another article nor another
/// depth below 75% makes its run new.
#[test]
fn a_rule_reading_keys_of_an_object_is_remembered_by_those_keys() {
    const BY_KEYS: &str = r#"
const ON = ["scroll"];
if user.showing("offer") == "x" { return; }
if user.scroll.depth > 75.0 || user.scroll.max_depth > 75.0 { adjust("offer", "x"); }
"#;
    let w = World::new(
        &[
            ("by_keys", BY_KEYS),
            (
                "scroll_offer",
                include_str!("../../../../scripts/scroll_offer.rhai"),
            ),
        ],
        0.0,
    );
    let rules = rules_of(&w, true);
    let mut u = Driver::new(6);
    u.page_view(&w, "/article/2", T0);
    let scroll = |u: &mut Driver, i: i64, depth: f64| {
        let at = T0 + 1_000 + i * 97;
        if i % 5 == 4 {
            // Another article: `on_page("/article")` reads the same, the path does not.
            u.page_view(&w, &format!("/article/{i}"), at - 1);
        }
        let ev = u.event(
            Props::Scroll {
                depth,
                max_depth: Some(depth + 10.0),
                velocity: Some(0.5 + i as f64),
            },
            None,
            at,
        );
        u.send(&w, ev.clone(), at);
        assert!(evaluate_as(&rules, u, &ev, at, true).is_empty());
    };
    // The same depth, another velocity every time.
    for i in 0..20 {
        scroll(&mut u, i, 40.0);
    }
    let st = rules.status("by_keys").unwrap();
    assert_eq!(st.runs, 20);
    assert!(st.replayed >= 19, "{} of 20 runs replayed", st.replayed);
    assert_eq!(rules.reads_plain_maps("by_keys"), Some(false));
    // Another depth every time, all below 75%: scroll_offer still replays.
    for i in 20..40 {
        scroll(&mut u, i, 20.0 + i as f64);
    }
    let st = rules.status("scroll_offer").unwrap();
    assert_eq!(st.runs, 40);
    assert!(st.replayed >= 38, "{} of 40 runs replayed", st.replayed);
}
