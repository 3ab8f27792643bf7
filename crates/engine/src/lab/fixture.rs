//! Fixture tests of rules (`trimtab rules test`): TOML files, by default `scripts/tests/*.toml`,
//! each holding cases — an optional history (the user's state before the case, taken into the
//! features only), a timeline of events at given milliseconds, and the adjustments expected —
//! run through [`super::Session`]: the server's own decision step with a fixed clock, timer
//! ticks fired as the shard fires them, frequency caps and experiments included.
//!
//! ```toml
//! rules = ["scroll_offer"]           # the rules installed for these cases (default: all)
//! [[case]]
//! name = "past 75% of an article: the offer"
//! context = { page = "/article/a", hour = 20 }   # merged into every event's context
//! [[case.events]]
//! at = 0
//! type = "page_view"
//! props = { path = "/article/a" }
//! [[case.events]]
//! at = 1500
//! type = "scroll"
//! props = { depth = 80.0 }
//! [[case.expect]]
//! at = 1500                          # or after/before (inclusive), or neither
//! slot = "offer"
//! variant = "discount"
//! params = { code = "READ15" }       # optional: compared when given (only the keys given)
//! ```
//! Adjustments are matched in order, one to one: a case without `[[case.expect]]` expects
//! none at all. Events are wire events (`type`, `target`, `props`, `context`, `session`, `id`,
//! `consent`) parsed by the server's parser; `id` defaults to `e<n>`, `session` to `s1`,
//! consent to analytics and personalisation given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Fired, LabConfig, LabError, RuleSet, Session, World};
use crate::features::UserState;
use trimtab_wire::Event;

/// The clock of every case: 2026-01-01T12:00:00Z (events' `at` count from here).
pub const START_MS: i64 = 1_767_268_800_000;

/// A fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Rules installed for every case of the file (default: every rule of the dir).
    rules: Option<Vec<String>>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: Option<String>,
    /// Overrides the file's `rules`.
    rules: Option<Vec<String>>,
    /// The user's id (pseudonymised as the server would, with a fixed key): experiments
    /// assign by it.
    user: Option<String>,
    /// Merged into every event's `context` (the event's own keys win).
    context: Option<toml::Table>,
    /// Events before the case (their `at` ≤ 0), taken into the features only.
    #[serde(default)]
    history: Vec<toml::Table>,
    #[serde(default)]
    events: Vec<toml::Table>,
    /// Timer ticks run until this many ms (default: the last event + 10 s).
    until: Option<i64>,
    #[serde(default)]
    expect: Vec<Expect>,
}

/// One expected adjustment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub slot: String,
    pub variant: String,
    /// Exactly at this ms of the case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// At or after this ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At or before this ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// These params (the keys given) with these values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
    /// Asked by this rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Triggered by the event with this id (`"tick"`: by a timer tick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

impl Expect {
    fn matches(&self, f: &Got) -> bool {
        self.slot == f.slot
            && self.variant == f.variant
            && self.at.is_none_or(|a| a == f.at)
            && self.after.is_none_or(|a| f.at >= a)
            && self.before.is_none_or(|b| f.at <= b)
            && self
                .params
                .as_ref()
                .is_none_or(|p| p.iter().all(|(k, v)| f.params.get(k) == Some(v)))
            && self
                .rule
                .as_ref()
                .is_none_or(|r| f.rule.as_ref() == Some(r))
            && self
                .trigger
                .as_ref()
                .is_none_or(|t| f.trigger.as_deref().unwrap_or("tick") == t)
    }

    fn describe(&self) -> String {
        let when = match (self.at, self.after, self.before) {
            (Some(a), _, _) => format!("at {a} ms"),
            (None, Some(a), Some(b)) => format!("between {a} and {b} ms"),
            (None, Some(a), None) => format!("at or after {a} ms"),
            (None, None, Some(b)) => format!("by {b} ms"),
            _ => "at any time".into(),
        };
        let mut s = format!("{} = {} {when}", self.slot, self.variant);
        if let Some(p) = &self.params {
            s.push_str(&format!(" {}", params_text(p)));
        }
        if let Some(r) = &self.rule {
            s.push_str(&format!(" by {r}"));
        }
        if let Some(t) = &self.trigger {
            s.push_str(&format!(" on {t}"));
        }
        s
    }
}

/// An adjustment a case produced, its time relative to the case's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Got {
    pub at: i64,
    pub slot: String,
    pub variant: String,
    pub params: BTreeMap<String, String>,
    pub rule: Option<String>,
    pub experiment: Option<String>,
    /// The triggering event's id (None: a timer tick).
    pub trigger: Option<String>,
}

impl Got {
    fn of(f: Fired) -> Got {
        Got {
            at: f.at - START_MS,
            slot: f.slot,
            variant: f.variant,
            params: f.params,
            rule: f.rule,
            experiment: f.experiment,
            trigger: f.trigger,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} = {} at {} ms {}",
            self.slot,
            self.variant,
            self.at,
            params_text(&self.params)
        );
        if let Some(r) = &self.rule {
            s.push_str(&format!(" by {r}"));
        }
        if let Some(e) = &self.experiment {
            s.push_str(&format!(" (experiment {e})"));
        }
        s.push_str(&format!(
            " on {}",
            self.trigger.as_deref().unwrap_or("tick")
        ));
        s
    }
}

fn params_text(p: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = p.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The outcome of one case.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub passed: bool,
    pub expected: Vec<Expect>,
    pub got: Vec<Got>,
    /// Rule failures during the case, and problems with the case itself.
    pub errors: Vec<String>,
}

impl CaseResult {
    /// The diff for people: each expectation against what came, in order.
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("    ! {e}\n"));
        }
        for i in 0..self.expected.len().max(self.got.len()) {
            match (self.expected.get(i), self.got.get(i)) {
                (Some(e), Some(g)) if e.matches(g) => {
                    out.push_str(&format!("      {}\n", g.describe()))
                }
                (Some(e), Some(g)) => {
                    out.push_str(&format!("    - {}\n", e.describe()));
                    out.push_str(&format!("    + {}\n", g.describe()));
                }
                (Some(e), None) => out.push_str(&format!("    - {}\n", e.describe())),
                (None, Some(g)) => out.push_str(&format!("    + {}\n", g.describe())),
                (None, None) => {}
            }
        }
        if self.expected.is_empty() && self.got.is_empty() {
            out.push_str("      (no adjustment, as expected)\n");
        }
        out
    }
}

/// The fixture files of `dir` (`*.toml`, sorted).
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| LabError::Io(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let p = entry
            .map_err(|e| LabError::Io(format!("{}: {e}", dir.display())))?
            .path();
        if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Runs every case of the fixture file `path` against the rules of `rules_dir`.
pub fn run_file(
    path: &Path,
    rules_dir: &Path,
    cfg: &LabConfig,
) -> Result<Vec<CaseResult>, LabError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LabError::Io(format!("{shown}: {e}")))?;
    let file: File = toml::from_str(&text).map_err(|e| {
        LabError::Io(format!(
            "{shown}: not a fixture file: {}",
            e.to_string().trim()
        ))
    })?;
    if file.cases.is_empty() {
        return Err(LabError::Io(format!("{shown}: no [[case]] in the file")));
    }
    let mut out = Vec::new();
    for (i, case) in file.cases.into_iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", i + 1));
        let only = case.rules.clone().or_else(|| file.rules.clone());
        let set = RuleSet::build(Some(rules_dir), only.as_deref(), &[], &cfg.limits)?;
        let world = World::new(cfg.clone(), set.rules.clone())?;
        let expected = case.expect.clone();
        let (got, errors) = match run_case(&world, &case) {
            Ok(got) => (got, rule_errors(&world)),
            Err(e) => (Vec::new(), vec![e]),
        };
        let passed = errors.is_empty()
            && got.len() == expected.len()
            && expected.iter().zip(&got).all(|(e, g)| e.matches(g));
        out.push(CaseResult {
            file: shown.clone(),
            name,
            passed,
            expected,
            got,
            errors,
        });
    }
    Ok(out)
}

/// Rule runs that failed during a case (each rule's last error).
fn rule_errors(world: &World) -> Vec<String> {
    world
        .rules
        .statuses()
        .into_iter()
        .filter(|s| s.failures > 0)
        .map(|s| {
            let last = s
                .last_error
                .map(|e| format!("{} at {}", e.message, e.location))
                .unwrap_or_default();
            format!(
                "rule {} failed {} of {} runs: {last}",
                s.name, s.failures, s.runs
            )
        })
        .collect()
}

/// One event of a case as the wire has it, with the case's defaults.
fn wire_event(
    t: &toml::Table,
    n: usize,
    context: Option<&toml::Table>,
) -> Result<(i64, Value), String> {
    let mut v = serde_json::to_value(t).map_err(|e| e.to_string())?;
    let obj = v.as_object_mut().ok_or("an event must be a table")?;
    let at = obj
        .remove("at")
        .ok_or("every event needs `at` (ms from the case's start)")?
        .as_i64()
        .ok_or("`at` must be an integer (ms)")?;
    obj.entry("id").or_insert_with(|| json!(format!("e{n}")));
    obj.entry("session").or_insert_with(|| json!("s1"));
    obj.entry("ts").or_insert_with(|| json!(START_MS + at));
    obj.entry("consent")
        .or_insert_with(|| json!({"analytics": true, "personalization": true}));
    if let Some(c) = context {
        let base = serde_json::to_value(c).map_err(|e| e.to_string())?;
        let ctx = obj.entry("context").or_insert_with(|| json!({}));
        if let (Some(ctx), Some(base)) = (ctx.as_object_mut(), base.as_object()) {
            for (k, v) in base {
                ctx.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    Ok((at, v))
}

/// Parses one event with the server's parser, received at `START_MS + at`.
fn parse(v: Value, at: i64, what: &str) -> Result<Event, String> {
    super::parse_event(v, START_MS + at).map_err(|e| format!("{what}: {e}"))
}

fn run_case(world: &World, case: &Case) -> Result<Vec<Got>, String> {
    let user = case.user.as_deref().unwrap_or("fixture-user");
    let key = trimtab_privacy::Pseudonymizer::new([0; 32]).user(user);
    let mut s = Session::new(key, UserState::default());
    for (i, t) in case.history.iter().enumerate() {
        let what = format!("history[{i}]");
        let (at, v) =
            wire_event(t, i, case.context.as_ref()).map_err(|e| format!("{what}: {e}"))?;
        if at > 0 {
            return Err(format!("{what}: history comes before the case (at ≤ 0)"));
        }
        s.history(world, &parse(v, at, &what)?);
    }
    let mut timeline = Vec::new();
    for (i, t) in case.events.iter().enumerate() {
        let what = format!("events[{i}]");
        let (at, v) = wire_event(t, case.history.len() + i, case.context.as_ref())
            .map_err(|e| format!("{what}: {e}"))?;
        timeline.push((at, Arc::new(parse(v, at, &what)?)));
    }
    timeline.sort_by_key(|(at, _)| *at);
    let mut fired = Vec::new();
    for (_, ev) in &timeline {
        s.event(world, ev, &mut fired);
    }
    let last = timeline.last().map_or(0, |(at, _)| *at);
    s.run_timers(
        world,
        START_MS + case.until.unwrap_or(last + 10_000),
        &mut fired,
    );
    Ok(fired.into_iter().map(Got::of).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("t.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn rules_dir(rules: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, s) in rules {
            std::fs::write(d.path().join(format!("{n}.rhai")), s).unwrap();
        }
        d
    }

    const DEEP: &str = r#"
const ON = ["scroll"];
if user.showing("offer") == "deep" { return; }
if (user.scroll?.depth ?? 0.0) > 50.0 { adjust("offer", "deep", #{ at: "" + event.props.depth }); }
"#;

    #[test]
    fn passing_and_failing_cases_with_their_diffs() {
        let rules = rules_dir(&[("deep", DEEP)]);
        let dir = tempfile::tempdir().unwrap();
        let p = fixture(
            dir.path(),
            r#"
[[case]]
name = "deep scroll"
context = { page = "/a", hour = 10 }
[[case.events]]
at = 0
type = "page_view"
props = { path = "/a" }
[[case.events]]
at = 300
type = "scroll"
props = { depth = 40.0 }
[[case.events]]
at = 900
type = "scroll"
props = { depth = 60.0 }
[[case.expect]]
at = 900
slot = "offer"
variant = "deep"
params = { at = "60.0" }
trigger = "e2"

[[case]]
name = "shallow scroll expects nothing but gets it wrong"
[[case.events]]
at = 0
type = "scroll"
props = { depth = 70.0 }

[[case]]
name = "wrong variant"
[[case.events]]
at = 0
type = "scroll"
props = { depth = 70.0 }
[[case.expect]]
slot = "offer"
variant = "shallow"
"#,
        );
        let r = run_file(&p, rules.path(), &LabConfig::default()).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[0].passed, "{}", r[0].diff());
        assert_eq!(r[0].got[0].rule.as_deref(), Some("deep"));
        assert!(!r[1].passed);
        assert!(
            r[1].diff().contains("+ offer = deep at 0 ms"),
            "{}",
            r[1].diff()
        );
        assert!(!r[2].passed);
        let d = r[2].diff();
        assert!(
            d.contains("- offer = shallow at any time") && d.contains("+ offer = deep"),
            "{d}"
        );
    }

    #[test]
    fn ticks_fire_between_events_and_history_sets_the_state() {
        let hover = r#"
const ON = ["hover", "tick"];
if user.showing("review") != "" { return; }
if user.hovering_ms("img") > 1000 { adjust("review", "shown", #{}); }
"#;
        let rules = rules_dir(&[("hover", hover), ("deep", DEEP)]);
        let dir = tempfile::tempdir().unwrap();
        let p = fixture(
            dir.path(),
            r#"
rules = ["hover"]
[[case]]
name = "a hover held past 1 s, seen by a tick"
[[case.events]]
at = 0
type = "page_view"
props = { path = "/p" }
[[case.events]]
at = 0
type = "hover"
target = "img"
props = { phase = "start" }
[[case.expect]]
after = 1000
before = 1300
slot = "review"
variant = "shown"
trigger = "tick"

[[case]]
name = "history: the deep rule is not installed, the earlier scroll counts nothing"
[[case.history]]
at = -5000
type = "scroll"
props = { depth = 90.0 }
[[case.events]]
at = 0
type = "hover"
target = "img"
props = { phase = "end", duration_ms = 200 }
"#,
        );
        let r = run_file(&p, rules.path(), &LabConfig::default()).unwrap();
        assert!(r[0].passed, "{}", r[0].diff());
        // 250 ms ticks from the hover at 0: the first past 1000 ms is at 1250.
        assert_eq!(r[0].got[0].at, 1250);
        assert!(r[1].passed, "{}", r[1].diff());
    }

    #[test]
    fn broken_rules_bad_events_and_failing_runs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = fixture(
            dir.path(),
            "[[case]]\n[[case.events]]\nat = 0\ntype = \"scroll\"\nprops = { depth = \"deep\" }\n",
        );
        let bad = rules_dir(&[("bad", "let x = ;")]);
        match run_file(&p, bad.path(), &LabConfig::default()) {
            Err(LabError::Compile { name, line, .. }) => {
                assert_eq!((name.as_str(), line), ("bad", Some(1)))
            }
            other => panic!("{other:?}"),
        }
        let ok = rules_dir(&[("deep", DEEP)]);
        let r = run_file(&p, ok.path(), &LabConfig::default()).unwrap();
        assert!(!r[0].passed);
        assert!(
            r[0].errors[0].contains("events[0]") && r[0].errors[0].contains("props.depth"),
            "{:?}",
            r[0].errors
        );
        let failing = rules_dir(&[("boom", "const ON = [\"scroll\"]; throw \"boom\";")]);
        let p = fixture(
            dir.path(),
            "[[case]]\n[[case.events]]\nat = 0\ntype = \"scroll\"\nprops = { depth = 5.0 }\n",
        );
        let r = run_file(&p, failing.path(), &LabConfig::default()).unwrap();
        assert!(!r[0].passed);
        assert!(
            r[0].errors[0].contains("rule boom failed 1 of 1 runs"),
            "{:?}",
            r[0].errors
        );
        std::fs::write(&p, "[[case]]\nnope = 1\n").unwrap();
        assert!(
            matches!(run_file(&p, ok.path(), &LabConfig::default()), Err(LabError::Io(m)) if m.contains("nope"))
        );
    }
}
