//! Remembered rule runs: a rule's outcome replayed from what it read, without running Rhai.
//!
//! A rule run is a deterministic function of what it reads: the views' fields and helpers
//! (`user.page`, `user.showing(slot)`, `event.type`, …), `experiment(id)` and `predict(…)`.
//! Scripts have no clock (`now_ms` aside, see below), no randomness and no state between runs,
//! and a view never changes during one evaluation. So when every read a past run made returns
//! the same value now, the run would end the same way, with the same `adjust()` calls.
//!
//! Owns: [`Read`] (one read a script can make, with its arguments), the recording of a run's
//! reads (into the running call's state, see `sandbox`), and [`Trace`]: a per-rule, per-thread
//! decision tree of past runs. Its root is the first read every run makes; each branch is one
//! value that read returned, leading to the next read that run made; a leaf is the run's
//! outcome. A lookup replays the reads in Rust and follows the branches; a missing branch is a
//! miss, and the rule runs in Rhai as before, recorded, and its path is added. Because the path
//! depends only on read values, one tree serves every user: "already showing the offer" or
//! "hour 20, no hovers on the CTA" is one path for all of them.
//!
//! Never remembered: a run that failed, logged (`log`, `print`, `debug`: a replay would drop the
//! line) or read more than [`MAX_READS`] values; a rule whose source names `now_ms` (it changes
//! on every run). Trees are bounded ([`MAX_NODES`] nodes, [`MAX_ARMS`] values per read), so a
//! read of a value that differs on every run (a scroll depth) stops growing its node and those
//! runs go to Rhai, which is also what they cost without this.

use rhai::{Array, Dynamic, ImmutableString, Map, FLOAT, INT};

use super::view::{self, EventView, TargetStat, UserView};
use super::AdjustRequest;

/// Most reads recorded for one run; a run that reads more is not remembered.
pub(crate) const MAX_READS: usize = 64;
/// Most nodes (reads and outcomes) in one rule's tree on one thread.
pub(crate) const MAX_NODES: usize = 2048;
/// Most distinct values remembered for one read; later values are runs that go to Rhai.
pub(crate) const MAX_ARMS: usize = 24;
/// Lookups in one window of the hit rate (see [`Trace::should_try`]).
const WINDOW: u32 = 256;
/// Fewest replays in a window for remembering to go on; below it, it pauses. A lookup that
/// misses costs about a third of a short rule's run in Rhai (it evaluates the reads the run
/// makes again), so below one hit in four the lookups cost more than the replays save.
const MIN_HITS: u32 = WINDOW / 4;
/// Runs that skip remembering once a window fell below [`MIN_HITS`]; then it tries again.
const PAUSE: u32 = 4096;

/// One read a script can make through the views or the global helpers, with its arguments.
#[derive(Debug, Clone)]
pub(crate) enum Read {
    UserField(ImmutableString),
    UserKeys,
    UserLen,
    UserContains(ImmutableString),
    UserToMap,
    /// Key `.1` of the object `user.<.0>` (a [`view::MapView`]).
    UserSub(ImmutableString, ImmutableString),
    EventField(ImmutableString),
    /// Key `.1` of the object `event.<.0>` (`event.props` as a [`view::MapView`]).
    EventSub(ImmutableString, ImmutableString),
    EventKeys,
    EventLen,
    EventContains(ImmutableString),
    EventToMap,
    /// `user.experiment(id)`.
    UserExperiment(ImmutableString),
    /// `experiment(id)` (the arms of the user being evaluated).
    Arm(ImmutableString),
    Predict(ImmutableString, ImmutableString, ImmutableString),
    HoverMs(ImmutableString),
    HoveringMs(ImmutableString),
    HoverCount(ImmutableString),
    DwellMs(ImmutableString),
    Clicks(ImmutableString),
    Seen(ImmutableString),
    SeqLast(INT),
    SeqContains(ImmutableString),
    SeqEndsWith(Array),
    SeqCount(ImmutableString),
    SeqCountLast(INT, ImmutableString),
    Hour,
    IsMobile,
    Showing(ImmutableString),
    /// `user.on_page(prefix)`.
    OnPage(ImmutableString),
    /// `user.scrolled_past(pct)`.
    ScrolledPast(FLOAT),
}

/// What a replay reads from: the evaluation's views.
pub(crate) struct Views<'a> {
    pub(crate) user: &'a UserView,
    pub(crate) event: &'a EventView,
}

impl Read {
    /// The value of a read of `user` (None for a read of something else).
    pub(crate) fn of_user(&self, u: &UserView) -> Option<Dynamic> {
        let s = u.source();
        let v = match self {
            Read::UserField(f) => s.field(f),
            Read::UserSub(f, k) => s.sub(f, k),
            Read::UserKeys => Dynamic::from_array(s.keys().iter().map(|k| view::text(k)).collect()),
            Read::UserLen => Dynamic::from_int(s.keys().len() as INT),
            Read::UserContains(k) => Dynamic::from_bool(s.keys().contains(&k.as_str())),
            Read::UserToMap => Dynamic::from_map(
                s.keys()
                    .iter()
                    .map(|k| ((*k).into(), s.field(k)))
                    .collect::<Map>(),
            ),
            Read::UserExperiment(id) => text_owned(s.experiment(id).unwrap_or_default()),
            Read::HoverMs(t) => Dynamic::from_int(view::hover_ms(u, t)),
            Read::HoveringMs(t) => Dynamic::from_int(s.target(t, TargetStat::HoveringMs)),
            Read::HoverCount(t) => Dynamic::from_int(s.target(t, TargetStat::HoverCount)),
            Read::DwellMs(t) => Dynamic::from_int(view::dwell_ms(u, t)),
            Read::Clicks(t) => Dynamic::from_int(s.target(t, TargetStat::Clicks)),
            Read::Seen(t) => Dynamic::from_bool(view::dwell_ms(u, t) > 0),
            Read::SeqLast(n) => Dynamic::from_array(u.seq_last(*n)),
            Read::SeqContains(e) => Dynamic::from_bool(view::seq_contains(u, e)),
            Read::SeqEndsWith(suffix) => Dynamic::from_bool(view::seq_ends_with(u, suffix)),
            Read::SeqCount(p) => Dynamic::from_int(view::seq_count(u, p)),
            Read::SeqCountLast(n, p) => Dynamic::from_int(view::seq_count_last(u, *n, p)),
            Read::Hour => Dynamic::from_int(s.hour()),
            Read::IsMobile => Dynamic::from_bool(s.device() == "mobile"),
            Read::Showing(slot) => text_owned(s.showing(slot)),
            Read::OnPage(prefix) => Dynamic::from_bool(s.page().starts_with(prefix.as_str())),
            Read::ScrolledPast(pct) => Dynamic::from_bool(view::scrolled_past(u, *pct)),
            _ => return None,
        };
        Some(v)
    }

    /// The value of a read of `event` (None for a read of something else).
    pub(crate) fn of_event(&self, e: &EventView) -> Option<Dynamic> {
        let s = &*e.0;
        let v = match self {
            Read::EventField(f) => s.field(f),
            Read::EventSub(f, k) => s.sub(f, k),
            Read::EventKeys => {
                Dynamic::from_array(s.keys().iter().map(|k| view::text(k)).collect())
            }
            Read::EventLen => Dynamic::from_int(s.keys().len() as INT),
            Read::EventContains(k) => Dynamic::from_bool(s.keys().contains(&k.as_str())),
            Read::EventToMap => Dynamic::from_map(
                s.keys()
                    .iter()
                    .map(|k| ((*k).into(), s.field(k)))
                    .collect::<Map>(),
            ),
            _ => return None,
        };
        Some(v)
    }

    /// The value of a global read (the evaluation's arms and scorer, set by `evaluate`).
    pub(crate) fn of_globals(&self) -> Option<Dynamic> {
        match self {
            Read::Arm(id) => Some(text_owned(&super::sandbox::arm_of(id))),
            Read::Predict(k, s, v) => Some(Dynamic::from_float(super::sandbox::predict(k, s, v))),
            _ => None,
        }
    }

    fn eval(&self, v: &Views<'_>) -> Option<Dynamic> {
        self.of_user(v.user)
            .or_else(|| self.of_event(v.event))
            .or_else(|| self.of_globals())
    }

    fn same(&self, other: &Read) -> bool {
        use Read::*;
        match (self, other) {
            (UserField(a), UserField(b))
            | (UserContains(a), UserContains(b))
            | (EventField(a), EventField(b))
            | (EventContains(a), EventContains(b))
            | (UserExperiment(a), UserExperiment(b))
            | (Arm(a), Arm(b))
            | (HoverMs(a), HoverMs(b))
            | (HoveringMs(a), HoveringMs(b))
            | (HoverCount(a), HoverCount(b))
            | (DwellMs(a), DwellMs(b))
            | (Clicks(a), Clicks(b))
            | (Seen(a), Seen(b))
            | (SeqContains(a), SeqContains(b))
            | (SeqCount(a), SeqCount(b))
            | (Showing(a), Showing(b))
            | (OnPage(a), OnPage(b)) => a == b,
            (Predict(a, b, c), Predict(x, y, z)) => a == x && b == y && c == z,
            (UserSub(a, b), UserSub(x, y)) | (EventSub(a, b), EventSub(x, y)) => a == x && b == y,
            (SeqLast(a), SeqLast(b)) => a == b,
            (ScrolledPast(a), ScrolledPast(b)) => a.to_bits() == b.to_bits(),
            (SeqCountLast(a, p), SeqCountLast(b, q)) => a == b && p == q,
            (SeqEndsWith(a), SeqEndsWith(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
            }
            (UserKeys, UserKeys)
            | (UserLen, UserLen)
            | (UserToMap, UserToMap)
            | (EventKeys, EventKeys)
            | (EventLen, EventLen)
            | (EventToMap, EventToMap)
            | (Hour, Hour)
            | (IsMobile, IsMobile) => true,
            _ => false,
        }
    }
}

fn text_owned(s: &str) -> Dynamic {
    Dynamic::from(ImmutableString::from(s))
}

/// Reads `r` of `u` for a script, recording it when the running call records.
pub(crate) fn user(u: &UserView, r: Read) -> Dynamic {
    let v = r.of_user(u).unwrap_or(Dynamic::UNIT);
    record(r, &v);
    v
}

/// Reads `r` of `e` for a script, recording it when the running call records.
pub(crate) fn event(e: &EventView, r: Read) -> Dynamic {
    let v = r.of_event(e).unwrap_or(Dynamic::UNIT);
    record(r, &v);
    v
}

/// A global read (`experiment(id)`, `predict(…)`) for a script, recorded likewise.
pub(crate) fn global(r: Read) -> Dynamic {
    let v = r.of_globals().unwrap_or(Dynamic::UNIT);
    record(r, &v);
    v
}

fn record(r: Read, v: &Dynamic) {
    super::sandbox::with_current(|s| {
        if let Some(reads) = &mut s.reads {
            if reads.len() >= MAX_READS {
                s.memo_ok = false;
            } else {
                reads.push((r, v.clone()));
            }
        }
    });
}

/// Whether two read values are the same for every purpose a script has: same type and value
/// (floats bit for bit, so `-0.0` and NaNs are told apart), maps and arrays element by element.
/// A value of any other type is never the same (its run is not replayed).
pub(crate) fn same(a: &Dynamic, b: &Dynamic) -> bool {
    if a.is_unit() {
        b.is_unit()
    } else if a.is_bool() {
        b.is_bool() && a.as_bool() == b.as_bool()
    } else if a.is_int() {
        b.is_int() && a.as_int() == b.as_int()
    } else if a.is_float() {
        b.is_float()
            && matches!((a.as_float(), b.as_float()), (Ok(x), Ok(y)) if x.to_bits() == y.to_bits())
    } else if a.is_char() {
        b.is_char() && a.as_char() == b.as_char()
    } else if a.is_string() {
        b.is_string()
            && matches!(
                (a.read_lock::<ImmutableString>(), b.read_lock::<ImmutableString>()),
                (Some(x), Some(y)) if *x == *y
            )
    } else if a.is_array() {
        match (a.read_lock::<Array>(), b.read_lock::<Array>()) {
            (Some(x), Some(y)) => {
                x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same(p, q))
            }
            _ => false,
        }
    } else if a.is_map() {
        match (a.read_lock::<Map>(), b.read_lock::<Map>()) {
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y.iter())
                        .all(|((k1, v1), (k2, v2))| k1 == k2 && same(v1, v2))
            }
            _ => false,
        }
    } else {
        false
    }
}

/// A hash of a read value, equal for values that are [`same`]; a lookup compares it before
/// walking a remembered value, so a read with many remembered values costs one hash and a
/// few integer compares. None for a type [`same`] never matches.
pub(crate) fn fingerprint(v: &Dynamic) -> Option<u64> {
    use std::hash::{BuildHasher, Hasher};
    fn feed(v: &Dynamic, h: &mut impl Hasher) -> Option<()> {
        if v.is_unit() {
            h.write_u8(0);
        } else if v.is_bool() {
            h.write_u8(1);
            h.write_u8(u8::from(v.as_bool().ok()?));
        } else if v.is_int() {
            h.write_u8(2);
            h.write_i64(v.as_int().ok()?);
        } else if v.is_float() {
            h.write_u8(3);
            h.write_u64(v.as_float().ok()?.to_bits());
        } else if v.is_char() {
            h.write_u8(4);
            h.write_u32(u32::from(v.as_char().ok()?));
        } else if v.is_string() {
            h.write_u8(5);
            h.write(v.read_lock::<ImmutableString>()?.as_bytes());
            h.write_u8(0xff);
        } else if v.is_array() {
            let a = v.read_lock::<Array>()?;
            h.write_u8(6);
            h.write_usize(a.len());
            for x in a.iter() {
                feed(x, h)?;
            }
        } else if v.is_map() {
            let m = v.read_lock::<Map>()?;
            h.write_u8(7);
            h.write_usize(m.len());
            for (k, x) in m.iter() {
                h.write(k.as_bytes());
                h.write_u8(0xff);
                feed(x, h)?;
            }
        } else {
            return None;
        }
        Some(())
    }
    let mut h = foldhash::fast::FixedState::with_seed(0x7472_696d_7461_6221).build_hasher();
    feed(v, &mut h)?;
    Some(h.finish())
}

/// One rule's remembered runs on one thread (see the module doc).
#[derive(Default)]
pub(crate) struct Trace {
    root: Node,
    nodes: usize,
    /// Set when two runs disagreed about what follows the same reads (a rule that is not
    /// deterministic after all): nothing is remembered or replayed any more.
    off: bool,
    /// Lookups and replays in the current window.
    tried: u32,
    hits: u32,
    /// Runs left that skip remembering (a rule whose outcome depends on a value that differs
    /// on almost every run would otherwise pay for lookups and recording and never replay).
    paused: u32,
}

#[derive(Default)]
enum Node {
    #[default]
    Unknown,
    Done(Vec<AdjustRequest>),
    Read(Box<Branch>),
}

struct Branch {
    read: Read,
    /// Values this read returned (with their [`fingerprint`]) and what followed each.
    arms: Vec<(u64, Dynamic, Node)>,
}

impl Trace {
    /// Whether this run should look for a remembered outcome (and be recorded on a miss):
    /// false while remembering is paused. Every window of [`WINDOW`] lookups with fewer than
    /// [`MIN_HITS`] replays pauses it for [`PAUSE`] runs.
    pub(crate) fn should_try(&mut self) -> bool {
        if self.off {
            return false;
        }
        if self.tried >= WINDOW {
            if self.hits < MIN_HITS {
                self.paused = PAUSE;
            }
            self.tried = 0;
            self.hits = 0;
        }
        if self.paused > 0 {
            self.paused -= 1;
            return false;
        }
        true
    }

    /// The outcome of a past run whose reads all return the same now, if there is one
    /// (counted towards the window of [`Trace::should_try`]).
    pub(crate) fn lookup(&mut self, views: &Views<'_>) -> Option<&[AdjustRequest]> {
        if self.off {
            return None;
        }
        self.tried += 1;
        let found = find(&self.root, views);
        if found.is_some() {
            self.hits += 1;
        }
        found
    }

    /// Remembers a successful run: its reads in order, and what it asked for.
    pub(crate) fn insert(&mut self, reads: Vec<(Read, Dynamic)>, out: &[AdjustRequest]) {
        if self.off {
            return;
        }
        let Trace {
            root, nodes, off, ..
        } = self;
        let mut node = root;
        for (read, value) in reads {
            if let Node::Unknown = node {
                if *nodes >= MAX_NODES {
                    return;
                }
                *nodes += 1;
                *node = Node::Read(Box::new(Branch {
                    read,
                    arms: Vec::new(),
                }));
            } else if let Node::Read(b) = node {
                if !b.read.same(&read) {
                    return disagree(off);
                }
            } else {
                return disagree(off);
            }
            let Node::Read(b) = node else {
                return;
            };
            let Some(fp) = fingerprint(&value) else {
                return; // a value no later read can match
            };
            let i = match b
                .arms
                .iter()
                .position(|(f, k, _)| *f == fp && same(k, &value))
            {
                Some(i) => i,
                None => {
                    if b.arms.len() >= MAX_ARMS || *nodes >= MAX_NODES {
                        return;
                    }
                    b.arms.push((fp, value, Node::Unknown));
                    b.arms.len() - 1
                }
            };
            node = &mut b.arms[i].2;
        }
        match node {
            Node::Unknown => {
                if *nodes < MAX_NODES {
                    *nodes += 1;
                    *node = Node::Done(out.to_vec());
                }
            }
            Node::Done(prev) if prev.as_slice() == out => {}
            _ => disagree(off),
        }
    }

    /// Nodes in the tree.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes
    }
}

/// Follows `root`'s branches for the values the reads return now, to a remembered outcome.
fn find<'t>(root: &'t Node, views: &Views<'_>) -> Option<&'t [AdjustRequest]> {
    let mut node = root;
    loop {
        match node {
            Node::Unknown => return None,
            Node::Done(out) => return Some(out),
            Node::Read(b) => {
                let v = b.read.eval(views)?;
                let fp = fingerprint(&v)?;
                node = &b.arms.iter().find(|(f, k, _)| *f == fp && same(k, &v))?.2;
            }
        }
    }
}

/// Turns a tree off: two runs disagreed about what follows the same reads.
fn disagree(off: &mut bool) {
    *off = true;
    tracing::warn!("a rule's runs disagree for the same reads; its runs are no longer remembered");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::view::{EventSource, UserSource};

    /// A user whose only readable fact is its hour.
    struct Hour(INT);

    impl UserSource for Hour {
        fn field(&self, _: &str) -> Dynamic {
            Dynamic::UNIT
        }
        fn keys(&self) -> &'static [&'static str] {
            &[]
        }
        fn target(&self, _: &str, _: TargetStat) -> INT {
            0
        }
        fn seq_len(&self) -> usize {
            0
        }
        fn seq(&self, _: usize) -> &str {
            ""
        }
        fn hour(&self) -> INT {
            self.0
        }
        fn device(&self) -> &str {
            ""
        }
        fn showing(&self, _: &str) -> &str {
            ""
        }
        fn page(&self) -> &str {
            ""
        }
        fn experiment(&self, _: &str) -> Option<&str> {
            None
        }
    }

    struct NoEvent;

    impl EventSource for NoEvent {
        fn field(&self, _: &str) -> Dynamic {
            Dynamic::UNIT
        }
        fn keys(&self) -> &'static [&'static str] {
            &[]
        }
    }

    fn views(hour: INT) -> (UserView, EventView) {
        (UserView(Arc::new(Hour(hour))), EventView(Arc::new(NoEvent)))
    }

    fn outcome(variant: &str) -> Vec<AdjustRequest> {
        vec![AdjustRequest {
            rule: "r".into(),
            slot: "s".into(),
            variant: variant.into(),
            params: Default::default(),
        }]
    }

    fn lookup(t: &mut Trace, hour: INT) -> Option<Vec<AdjustRequest>> {
        let (user, event) = views(hour);
        t.lookup(&Views {
            user: &user,
            event: &event,
        })
        .map(<[_]>::to_vec)
    }

    #[test]
    fn a_run_is_replayed_only_when_its_reads_read_the_same() {
        let mut t = Trace::default();
        assert_eq!(lookup(&mut t, 9), None);
        t.insert(vec![(Read::Hour, Dynamic::from_int(9))], &outcome("a"));
        t.insert(vec![(Read::Hour, Dynamic::from_int(20))], &[]);
        assert_eq!(lookup(&mut t, 9), Some(outcome("a")));
        assert_eq!(lookup(&mut t, 20), Some(vec![]));
        assert_eq!(lookup(&mut t, 10), None);
        assert_eq!(t.len(), 3, "one read node, two outcomes");
    }

    #[test]
    fn runs_that_disagree_turn_the_tree_off() {
        let mut t = Trace::default();
        t.insert(vec![(Read::Hour, Dynamic::from_int(9))], &outcome("a"));
        t.insert(vec![(Read::Hour, Dynamic::from_int(9))], &outcome("b"));
        assert_eq!(lookup(&mut t, 9), None);
        assert!(!t.should_try());
    }

    #[test]
    fn a_read_keeps_at_most_max_arms_values_and_the_tree_max_nodes() {
        let mut t = Trace::default();
        for h in 0..100 {
            t.insert(vec![(Read::Hour, Dynamic::from_int(h))], &[]);
        }
        assert_eq!(t.len(), 1 + MAX_ARMS);
        assert_eq!(lookup(&mut t, 0), Some(vec![]));
        assert_eq!(lookup(&mut t, MAX_ARMS as INT), None, "past the bound: run");

        let mut t = Trace::default();
        for a in 0..MAX_ARMS as INT {
            for b in 0..MAX_ARMS as INT {
                let reads = vec![
                    (Read::Hour, Dynamic::from_int(a)),
                    (Read::SeqLast(1), Dynamic::from_int(b)),
                ];
                t.insert(reads, &[]);
            }
        }
        assert!(t.len() <= MAX_NODES, "{}", t.len());
    }

    #[test]
    fn a_rule_that_never_replays_pauses_then_tries_again() {
        let mut t = Trace::default();
        for h in 0..WINDOW as INT {
            assert!(t.should_try());
            assert_eq!(lookup(&mut t, 1000 + h), None);
        }
        let skipped = (0..PAUSE + 10).take_while(|_| !t.should_try()).count();
        assert_eq!(
            skipped, PAUSE as usize,
            "paused for PAUSE runs, then tried again"
        );
        // A rule that replays often is never paused.
        let mut t = Trace::default();
        t.insert(vec![(Read::Hour, Dynamic::from_int(9))], &[]);
        for _ in 0..4 * WINDOW {
            assert!(t.should_try());
            assert!(lookup(&mut t, 9).is_some());
        }
    }

    #[test]
    fn values_are_the_same_only_in_type_and_value() {
        let f = Dynamic::from_float;
        assert!(same(&f(1.5), &f(1.5)));
        assert!(!same(&f(0.0), &f(-0.0)), "told apart: 1/x differs");
        assert!(!same(&Dynamic::from_int(1), &f(1.0)));
        assert!(!same(&Dynamic::from_int(1), &Dynamic::from_bool(true)));
        assert!(same(&text_owned("a"), &text_owned("a")));
        assert!(!same(&text_owned("a"), &text_owned("b")));
        let arr = |v: Vec<INT>| Dynamic::from_array(v.into_iter().map(Dynamic::from_int).collect());
        assert!(same(&arr(vec![1, 2]), &arr(vec![1, 2])));
        assert!(!same(&arr(vec![1, 2]), &arr(vec![1, 2, 3])));
        let map = |k: &str, v: INT| {
            let mut m = Map::new();
            m.insert(k.into(), Dynamic::from_int(v));
            Dynamic::from_map(m)
        };
        assert!(same(&map("a", 1), &map("a", 1)));
        assert!(!same(&map("a", 1), &map("b", 1)));
        assert!(!same(&map("a", 1), &map("a", 2)));
        assert!(same(&Dynamic::UNIT, &Dynamic::UNIT));
        // Values that are the same hash the same; these differing ones hash apart.
        let pairs = [
            (map("a", 1), map("a", 1), true),
            (map("a", 1), map("a", 2), false),
            (map("a", 1), map("b", 1), false),
            (arr(vec![1, 2]), arr(vec![1, 2]), true),
            (arr(vec![12]), arr(vec![1, 2]), false),
            (text_owned("ab"), text_owned("ab"), true),
            (f(0.0), f(-0.0), false),
            (Dynamic::from_int(1), f(1.0), false),
            (Dynamic::UNIT, Dynamic::from_bool(false), false),
        ];
        for (a, b, eq) in pairs {
            assert_eq!(same(&a, &b), eq, "{a:?} {b:?}");
            assert_eq!(fingerprint(&a) == fingerprint(&b), eq, "{a:?} {b:?}");
        }
    }
}
