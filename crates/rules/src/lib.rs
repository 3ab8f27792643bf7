//! trimtab-rules: trigger rules, small Rhai scripts in `scripts/*.rhai` that look at one user's
//! behavioural state and the event just received, and ask for adjustments (`adjust(slot,
//! variant, params)`). It sees a user and an event only through the view traits ([`view`]) the
//! engine implements, and knows nothing of storage or HTTP (depends on trimtab-wire and -util).
//!
//! Owns: the sandboxed engine ([`sandbox`]), the functions exposed to scripts ([`api`]), the
//! compiled rules and their per-rule health/counters. The rules directory on disk, uploads,
//! deletions, keep-last-good and hot reload are the shared definition registry's
//! ([`trimtab_util::registry`]); this crate supplies how a rule compiles ([`RuleKind`]).
//!
//! Threads:
//! - [`Rules::evaluate`] runs on the calling shard worker thread, concurrently on many threads.
//!   It reads the compiled set through an [`ArcSwap`] (no lock), runs each rule under an
//!   operation limit and a wall-clock deadline, inside `catch_unwind`, and only touches atomics
//!   (plus a short mutex when recording a failure).
//! - [`Rules::put`], [`Rules::delete`], [`Rules::reload`] and the watcher thread started by
//!   [`Rules::watch`] go through the registry, which serialises them and swaps a new set in.
//!
//! Must not: block a shard thread for longer than about one timeout per rule, let one rule's
//! failure stop the others, or give scripts any I/O (see [`sandbox`]). Frequency capping and
//! delivery are the caller's business; this module only reports what rules asked for.
//!
//! The script model and API are documented for rule authors in `scripts/README.md`.

pub mod api;
pub mod check;
mod memo;
mod prelude;
mod sandbox;
pub mod view;
mod watch;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rhai::{Dynamic, Engine, Scope, AST};
use serde::{Deserialize, Serialize};
use trimtab_util::registry::{self, Entry, PutError, Registry};

pub use watch::RulesWatcher;

/// Largest accepted script source, in bytes (bounds compile time and memory).
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;
/// Longest rule name; names are `[a-z0-9_-]{1,64}`.
pub const MAX_RULE_NAME: usize = 64;

/// Sandbox limits applied to every rule (the `[rules]` section of the config).
///
/// Every limit is per rule run. A value of 0 is treated as 1 (never as "unlimited").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RuleLimits {
    /// Most Rhai operations (expression nodes, loop iterations, calls) per run.
    pub max_operations: u64,
    /// Deepest nesting of function calls (script-defined functions; bounds recursion).
    pub max_call_levels: usize,
    /// Deepest expression nesting at top level (checked when compiling).
    pub max_expr_depth: usize,
    /// Deepest expression nesting inside script-defined functions (checked when compiling).
    pub max_function_expr_depth: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_size: usize,
    /// Largest array a script may build.
    pub max_array_size: usize,
    /// Largest object map a script may build.
    pub max_map_size: usize,
    /// Most variables alive at once (including `user`, `event`, `now_ms`).
    pub max_variables: usize,
    /// Most functions a script may define.
    pub max_functions: usize,
    /// Wall-clock time per run, in milliseconds.
    pub timeout_ms: u64,
    /// Failures in a row after which a rule is disabled until its file changes.
    pub max_consecutive_failures: u32,
    /// A rule whose failures reach this share (percent) of a window of `failure_window` runs
    /// is disabled too (a rule failing every other event never fails 5 times in a row).
    pub max_failure_percent: u32,
    /// Runs per window of `max_failure_percent`.
    pub failure_window: u32,
    /// Wall-clock time all rules together may take per event, in milliseconds: a rule that
    /// would start after it is skipped, one running when it runs out is stopped (neither is
    /// a failure of that rule; both are counted as `budget_skips`).
    pub event_budget_ms: u64,
    /// Replay a rule's outcome without running it when everything it read in an earlier run
    /// reads the same now (`scripts/README.md`, "What a rule costs"). Off: every run runs.
    pub memo: bool,
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits {
            max_operations: 200_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 16 * 1024,
            max_array_size: 1_000,
            max_map_size: 1_000,
            max_variables: 256,
            max_functions: 64,
            timeout_ms: 50,
            max_consecutive_failures: 5,
            max_failure_percent: 50,
            failure_window: 100,
            event_budget_ms: 100,
            memo: true,
        }
    }
}

/// What one evaluation looks at: the user, the event, and the time.
///
/// The layouts are documented in `scripts/README.md` ("The `user` map", "The `event` map").
/// `user` and `event` are either plain maps of that layout or the lazy views of [`view`]
/// (what the engine passes: nothing is built or copied that a script does not read).
#[derive(Debug, Clone, Default)]
pub struct RuleInput {
    /// The user's behavioural state, visible to scripts as the constant `user`.
    pub user: Dynamic,
    /// The event being processed, visible to scripts as the constant `event`.
    pub event: Dynamic,
    /// Server time in Unix milliseconds, visible to scripts as the constant `now_ms`.
    pub now_ms: i64,
    /// `event.type`, when the caller knows it (else read from an `event` map): rules that
    /// declare `const ON = [...]` run only for those types.
    pub kind: Option<&'static str>,
    /// What `predict()` answers with (None: -1.0 for every call).
    pub scorer: Option<Scorer>,
}

/// Model scores for one evaluation: `(kind, slot, variant) → probability`, or `None` when no
/// model serves that slot (scripts then see -1.0).
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct Scorer(pub std::sync::Arc<dyn Fn(&str, &str, &str) -> Option<f64> + Send + Sync>);

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scorer")
    }
}

/// One `adjust()` call made by a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdjustRequest {
    /// The rule that asked (its file stem).
    pub rule: String,
    /// The page slot (`data-trimtab-slot`), validated `[A-Za-z0-9_.-]{1,64}`.
    pub slot: String,
    /// The variant to show (`data-trimtab-variant`), validated like `slot`.
    pub variant: String,
    /// Plain-text params (at most 16, each at most 512 characters); the SDK inserts them as text.
    pub params: BTreeMap<String, String>,
}

/// Where and why a rule failed to compile or run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleErrorInfo {
    /// What went wrong, without the position.
    pub message: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// `file:line:col`, e.g. `scripts/x.rhai:3:14` (just the file when the position is unknown).
    pub location: String,
}

/// The state of one rule, for the admin API, the dashboard and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    /// Rule name (the file stem).
    pub name: String,
    /// Path of the rule's file, as shown in error locations.
    pub file: String,
    /// Whether a compiled version of this rule runs on events.
    pub enabled: bool,
    /// `"compile_error"` if the current file does not compile (a previous good version may
    /// still run: see `enabled`), else `"disabled"` after too many failures, else `"active"`.
    pub state: &'static str,
    /// Why the current file does not compile.
    pub compile_error: Option<RuleErrorInfo>,
    /// Why the running version was disabled.
    pub disabled_reason: Option<String>,
    /// The last runtime failure of the running version.
    pub last_error: Option<RuleErrorInfo>,
    /// Runs since the rule was first loaded (kept across reloads).
    pub runs: u64,
    /// Failed runs since the rule was first loaded (kept across reloads).
    pub failures: u64,
    /// Failures in a row of the running version.
    pub consecutive_failures: u32,
    /// `adjust()` calls returned since the rule was first loaded (kept across reloads).
    pub adjustments: u64,
    /// Runs answered by replaying a remembered run instead of running Rhai (also in `runs`).
    pub replayed: u64,
    /// Runs skipped or stopped because the rules' time budget per event
    /// (`event_budget_ms`) had run out (not in `runs` or `failures`).
    pub budget_skips: u64,
    /// Rhai operations run (the unit of `max_operations`), summed over the runs that ran
    /// Rhai (a remembered run replays without any).
    pub operations: u64,
    /// When the running version (or, failing that, the current file) was loaded, Unix ms.
    pub loaded_at_ms: i64,
    /// SHA-256 (hex) of the running version's source (or of the current file if none runs).
    pub source_sha256: String,
    /// The event types the running version reacts to (`const ON = [...]`); None: every event.
    pub on: Option<Vec<String>>,
}

/// Errors of the rules module (the server gives each its code from the wire's error table).
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The rules directory or a rule file could not be read or written.
    #[error("rules I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A rule name is not `[a-z0-9_-]{1,64}`.
    #[error("invalid rule name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A script does not compile; nothing was written or installed.
    #[error("rule does not compile: {} at {}", info.message, info.location)]
    Compile {
        /// The first compile error.
        info: RuleErrorInfo,
    },
    /// The file watcher could not be started.
    #[error("cannot watch the rules directory: {0}")]
    Watch(#[source] notify::Error),
    /// No rule by that name.
    #[error("no rule named {0:?}")]
    NotFound(String),
}

/// The compiled trigger rules, shared by every shard thread (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct Rules {
    inner: Arc<Registry<RuleKind>>,
}

/// How a rule file compiles: the sandboxed engine and its limits (the registry's [`registry::Kind`]).
pub struct RuleKind {
    engine: Engine,
    limits: RuleLimits,
}

/// The registry's entry of one rule file.
type RuleEntry = Entry<RuleKind>;

/// A compiled version of a rule, its health (fresh for every new version) and the rule's
/// counters (carried over from version to version for as long as a rule of this name exists).
pub struct Version {
    /// The rule's name, shared with each run's call state (no copy per run).
    label: Arc<str>,
    ast: AST,
    /// The event types the rule declared it reacts to (`const ON = [...]`); None: all.
    on: Option<Vec<String>>,
    sha: String,
    loaded_at_ms: i64,
    health: Health,
    /// Rhai's run-time state for this rule, one per shard thread and kept between runs: its
    /// function-resolution cache is what makes a method call cheap after the first run.
    runtime: thread_local::ThreadLocal<std::cell::RefCell<Runtime>>,
    /// Whether runs of this version may be remembered (its source does not name `now_ms`).
    memo: bool,
    /// Remembered runs, one tree per shard thread (see `memo`).
    trace: thread_local::ThreadLocal<std::cell::RefCell<memo::Trace>>,
    /// Set once a run failed on an object read as a view and succeeded on plain maps: this
    /// version's runs read `user.scroll`, `event.props`, … as plain maps (see `view`).
    plain_maps: std::sync::atomic::AtomicBool,
    counters: Arc<Counters>,
}

impl registry::Kind for RuleKind {
    type Item = Version;
    type Error = RuleErrorInfo;
    const NOUN: &'static str = "rule";
    const EXT: &'static str = "rhai";
    const MAX_BYTES: u64 = MAX_SOURCE_BYTES as u64;

    fn check_name(&self, name: &str) -> Result<(), &'static str> {
        name_problem(name).map_or(Ok(()), Err)
    }

    fn compile(
        &self,
        name: &str,
        file: &str,
        text: &str,
        prev: Option<&Arc<Version>>,
    ) -> Result<Version, RuleErrorInfo> {
        let (ast, on, memo) = self.compile_rule(file, text)?;
        Ok(Version {
            label: name.into(),
            ast,
            on,
            sha: registry::sha256_hex(text),
            loaded_at_ms: unix_ms(),
            health: Health::default(),
            runtime: thread_local::ThreadLocal::new(),
            memo,
            trace: thread_local::ThreadLocal::new(),
            plain_maps: std::sync::atomic::AtomicBool::new(false),
            counters: prev.map_or_else(Arc::default, |p| Arc::clone(&p.counters)),
        })
    }

    fn describe(e: &RuleErrorInfo) -> String {
        format!("{} at {}", e.message, e.location)
    }
}

/// What `Engine::run_ast_with_scope` would build afresh on every run.
struct Runtime {
    global: rhai::GlobalRuntimeState,
    caches: rhai::Caches,
}

impl Runtime {
    fn new(engine: &Engine, ast: &AST) -> Runtime {
        let mut global = engine.new_global_runtime_state();
        global.source = ast.source().map(Into::into);
        global.lib.push(ast.shared_lib().clone());
        Runtime {
            global,
            caches: rhai::Caches::new(),
        }
    }

    /// Runs the rule's statements as `run_ast_with_scope` does, with this thread's state. A
    /// run that failed may have left the state mid-call (nesting levels, a pushed cache), so
    /// the caller drops the runtime after an error.
    fn run(
        &mut self,
        engine: &Engine,
        scope: &mut Scope,
        ast: &AST,
    ) -> Result<(), Box<rhai::EvalAltResult>> {
        let g = &mut self.global;
        g.num_operations = 0;
        g.level = 0;
        g.scope_level = 0;
        g.always_search_scope = false;
        #[allow(deprecated)] // the one entry point that takes a kept GlobalRuntimeState
        engine
            .eval_statements_raw(g, &mut self.caches, scope, ast.statements())
            .map(|_| ())
    }
}

#[derive(Default)]
struct Counters {
    runs: AtomicU64,
    failures: AtomicU64,
    adjustments: AtomicU64,
    /// Runs answered from remembered runs (also counted in `runs`).
    replayed: AtomicU64,
    /// Runs skipped or stopped by the per-event budget.
    budget_skips: AtomicU64,
    operations: AtomicU64,
}

#[derive(Default)]
struct Health {
    /// The current failure-rate window: failures in the high 32 bits, runs in the low.
    window: AtomicU64,
    consecutive: AtomicU32,
    disabled: AtomicBool,
    disabled_reason: Mutex<Option<String>>,
    last_error: Mutex<Option<RuleErrorInfo>>,
}

impl Health {
    /// Counts a run in the failure-rate window; at the end of a window, returns
    /// `(failures, runs)` when the failures reached `max_percent` of it.
    fn window_run(&self, failed: bool, window: u32, max_percent: u32) -> Option<(u32, u32)> {
        let add = 1 | (u64::from(failed) << 32);
        let now = self
            .window
            .fetch_add(add, Ordering::Relaxed)
            .wrapping_add(add);
        let runs = (now & 0xffff_ffff) as u32;
        // Exactly one run sees the count reach the window: it closes it, keeping what
        // other threads added since.
        if runs != window.max(1) {
            return None;
        }
        self.window.fetch_sub(now, Ordering::Relaxed);
        let fails = (now >> 32) as u32;
        (u64::from(fails) * 100 >= u64::from(max_percent) * u64::from(runs))
            .then_some((fails, runs))
    }

    /// A successful run.
    fn succeeded(&self, limits: &RuleLimits) -> Option<(u32, u32)> {
        self.consecutive.store(0, Ordering::Relaxed);
        self.window_run(false, limits.failure_window, limits.max_failure_percent)
    }
}

/// Locks `m`, ignoring poisoning: the data behind these mutexes (an `Option` or `()`) is
/// always valid, whatever a panicking holder was doing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

use trimtab_util::now_ms as unix_ms;

/// A compiled condition over `user` (see [`Rules::compile_condition`]).
#[derive(Clone)]
pub struct Condition {
    ast: Arc<AST>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Condition { .. }")
    }
}

/// What is wrong with a rule name, if anything: names are `[a-z0-9_-]{1,64}`.
/// Names no rule may have: the rule lab's endpoints sit where those rules' URLs would be.
pub const RESERVED_NAMES: &[&str] = &["check", "dry-run", "backtest"];

fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_RULE_NAME {
        Some("longer than 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        Some("only a-z 0-9 _ - are allowed")
    } else if RESERVED_NAMES.contains(&name) {
        Some("reserved: /v1/rules/check, /v1/rules/dry-run and /v1/rules/backtest are the rule lab's")
    } else {
        None
    }
}

/// Checks a rule name: `[a-z0-9_-]{1,64}`.
pub fn validate_name(name: &str) -> Result<(), RulesError> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(RulesError::InvalidName {
            name: sandbox::truncate(name, 80),
            reason,
        }),
    }
}

impl From<PutError<RuleErrorInfo>> for RulesError {
    fn from(e: PutError<RuleErrorInfo>) -> RulesError {
        match e {
            PutError::InvalidName { name, reason } => RulesError::InvalidName {
                name: sandbox::truncate(&name, 80),
                reason,
            },
            PutError::Invalid(info) => RulesError::Compile { info },
            PutError::Io { path, source } => RulesError::Io { path, source },
        }
    }
}

/// What `event.type` can be: the wire types plus the engine's own `tick` and `decide`.
pub fn trigger_types() -> impl Iterator<Item = &'static str> {
    trimtab_wire::EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(["tick", "decide"])
}

/// The names in scope while a script runs; also declared when compiling (strict variables).
const SCOPE_NAMES: [&str; 3] = ["user", "event", "now_ms"];

impl Rules {
    /// Compiles every `dir/*.rhai` (file stem = rule name; names: `[a-z0-9_-]{1,64}`; files with
    /// other names are skipped with a warning). A file that fails to compile is recorded with
    /// its error and not run; loading never fails because of one bad script. Creates `dir` if
    /// missing. Errors only if `dir` cannot be created or read.
    ///
    /// Runs on the caller's thread (startup).
    pub fn load(dir: &Path, limits: RuleLimits) -> Result<Rules, RulesError> {
        let engine = sandbox::build_engine(&limits);
        let registry =
            Registry::open(RuleKind { engine, limits }, dir).map_err(|source| RulesError::Io {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Rules {
            inner: Arc::new(registry),
        })
    }

    /// The rules directory.
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }

    /// The sandbox limits in force.
    pub fn limits(&self) -> &RuleLimits {
        &self.inner.kind().limits
    }

    /// Starts watching the rules directory and recompiling changed files (debounced ~150 ms;
    /// create, modify, rename and delete, including editors that save via temp file + rename).
    /// A file that no longer compiles keeps its previous good version running; its status
    /// shows `compile_error` and a `tracing::warn` is logged. Dropping the guard stops watching.
    ///
    /// Spawns one thread (`trimtab-rules-watch`) that owns the reloads.
    pub fn watch(&self) -> Result<RulesWatcher, RulesError> {
        watch::start(&self.inner)
    }

    /// Re-reads the rules directory and applies every difference: new files are compiled,
    /// changed files recompiled, removed files dropped. Unchanged files (same SHA-256) are
    /// left alone, keeping their health and counters. The watcher calls this after each burst
    /// of file events; it may also be called directly (e.g. from an admin "reload").
    pub fn reload(&self) -> Result<(), RulesError> {
        self.inner.reload().map_err(|source| RulesError::Io {
            path: self.dir().to_owned(),
            source,
        })
    }
}

impl RuleKind {
    /// Compiles with the sandboxed engine; `user`, `event` and `now_ms` are declared so strict
    /// variables mode accepts them (as plain variables: constants would be folded into the AST).
    fn compile(&self, file: &str, text: &str) -> Result<AST, RuleErrorInfo> {
        if text.len() > MAX_SOURCE_BYTES {
            return Err(RuleErrorInfo {
                message: format!("script is larger than {MAX_SOURCE_BYTES} bytes"),
                line: None,
                column: None,
                location: file.to_owned(),
            });
        }
        let mut scope = Scope::new();
        for name in SCOPE_NAMES {
            scope.push_dynamic(name, Dynamic::UNIT);
        }
        let compiled = trimtab_util::panics::catch(|| self.engine.compile_with_scope(&scope, text));
        match compiled {
            Ok(Ok(ast)) => Ok(ast),
            Ok(Err(e)) => Err(sandbox::compile_error_info(file, &e)),
            Err(payload) => Err(sandbox::panic_error_info(file, payload.as_ref())),
        }
    }

    /// Compiles a rule and reads its declared triggers: an optional top-level
    /// `const ON = ["scroll", "page_view"];` lists the event types the rule reacts to (any of
    /// [`trigger_types`]); the rule is then not run at all for other events.
    fn compile_rule(
        &self,
        file: &str,
        text: &str,
    ) -> Result<(AST, Option<Vec<String>>, bool), RuleErrorInfo> {
        let ast = self.compile(file, text)?;
        // A rule that reads the clock reads something new on every run: never remembered.
        // (Textual, so a comment naming it also opts out; that is only slower, never wrong.)
        let memo = !text.contains("now_ms");
        let bad = |message: String| RuleErrorInfo {
            message,
            line: None,
            column: None,
            location: file.to_owned(),
        };
        let Some((_, _, value)) = ast
            .iter_literal_variables(true, false)
            .find(|(n, _, _)| *n == "ON")
        else {
            return Ok((prelude::strip(ast), None, memo));
        };
        let Some(list) = value.read_lock::<rhai::Array>().map(|a| a.clone()) else {
            return Err(bad(
                "ON must be an array of event types, e.g. const ON = [\"scroll\", \"tick\"];"
                    .into(),
            ));
        };
        let mut on = Vec::with_capacity(list.len());
        for v in list {
            let t = v
                .into_immutable_string()
                .map_err(|_| bad("ON must be an array of event types (strings)".into()))?;
            if !trigger_types().any(|k| k == t.as_str()) {
                return Err(bad(format!(
                    "ON lists {t:?}, which is not an event type (one of {})",
                    trigger_types().collect::<Vec<_>>().join(", ")
                )));
            }
            on.push(t.to_string());
        }
        Ok((prelude::strip(ast), Some(on), memo))
    }
}

impl Rules {
    /// Runs every enabled rule (in name order) against `input` on the calling thread and
    /// returns all their `adjust()` calls, in order.
    ///
    /// Never panics and never blocks longer than about `timeout_ms` per rule. A runtime error,
    /// limit hit, timeout or panic is a failure of that rule only: its adjustments from that
    /// run are discarded, the other rules still run. After `max_consecutive_failures` failures
    /// in a row the rule is disabled (with a reason in its status) until its file changes or
    /// it is re-uploaded; a success resets the count.
    pub fn evaluate(&self, input: &RuleInput) -> Vec<AdjustRequest> {
        let set = self.inner.guard();
        let mut out = Vec::new();
        if set.is_empty() {
            return out;
        }
        // One scope per thread, reused: its storage is allocated once, not per evaluation
        // (a nested evaluation on the same thread, should one happen, gets its own).
        thread_local! {
            static SCOPE: std::cell::RefCell<Scope<'static>> =
                std::cell::RefCell::new(Scope::new());
        }
        SCOPE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scope) => self.evaluate_in(&mut scope, &set, input, &mut out),
            Err(_) => self.evaluate_in(&mut Scope::new(), &set, input, &mut out),
        });
        out
    }

    fn evaluate_in(
        &self,
        scope: &mut Scope<'static>,
        set: &registry::Set<RuleKind>,
        input: &RuleInput,
        out: &mut Vec<AdjustRequest>,
    ) {
        let limits = self.limits();
        let timeout = Duration::from_millis(limits.timeout_ms.max(1));
        let budget = Duration::from_millis(limits.event_budget_ms.max(1));
        let started = std::time::Instant::now();
        scope.rewind(0);
        scope.push_constant_dynamic("user", input.user.clone());
        scope.push_constant_dynamic("event", input.event.clone());
        scope.push_constant("now_ms", input.now_ms);
        let base = scope.len();
        let arms = match input.user.read_lock::<view::UserView>() {
            Some(v) => sandbox::Arms::View(v.clone()),
            None => input
                .user
                .read_lock::<rhai::Map>()
                .and_then(|u| {
                    u.get("experiments")
                        .and_then(|e| e.read_lock::<rhai::Map>().map(|m| m.clone()))
                })
                .map_or(sandbox::Arms::None, sandbox::Arms::Map),
        };
        sandbox::set_arms(arms);
        sandbox::set_scorer(input.scorer.clone());
        // The event's type, for rules that declared which ones they react to.
        let kind: Option<std::borrow::Cow<'_, str>> = match input.kind {
            Some(k) => Some(k.into()),
            None => input.event.read_lock::<rhai::Map>().and_then(|m| {
                m.get("type")
                    .and_then(|t| {
                        t.read_lock::<rhai::ImmutableString>()
                            .map(|s| s.to_string())
                    })
                    .map(Into::into)
            }),
        };

        // Runs are remembered only over the views, whose every read is recorded (a script
        // reads a plain map without any function of ours seeing it).
        let views = input
            .user
            .read_lock::<view::UserView>()
            .map(|u| u.clone())
            .zip(
                input
                    .event
                    .read_lock::<view::EventView>()
                    .map(|e| e.clone()),
            );
        for entry in set.values() {
            let Some(compiled) = &entry.live else {
                continue;
            };
            let counters = &compiled.counters;
            if compiled.health.disabled.load(Ordering::Relaxed) {
                continue;
            }
            if let (Some(on), Some(k)) = (&compiled.on, &kind) {
                if !on.iter().any(|t| t == k) {
                    continue; // not an event this rule reacts to: it costs nothing
                }
            }
            // A run whose reads all read the same as a remembered run's ends the same way.
            let trace = views
                .as_ref()
                .filter(|_| compiled.memo && limits.memo)
                .map(|v| (v, compiled.trace.get_or(Default::default)))
                .filter(|(_, t)| t.borrow_mut().should_try());
            if let Some((v, trace)) = &trace {
                let views = memo::Views {
                    user: &v.0,
                    event: &v.1,
                };
                if let Some(hit) = trace.borrow_mut().lookup(&views) {
                    counters.runs.fetch_add(1, Ordering::Relaxed);
                    counters.replayed.fetch_add(1, Ordering::Relaxed);
                    if let Some(rate) = compiled.health.succeeded(limits) {
                        self.disable_for_rate(compiled, rate);
                    }
                    let n = u64::try_from(hit.len()).unwrap_or(u64::MAX);
                    counters.adjustments.fetch_add(n, Ordering::Relaxed);
                    out.extend_from_slice(hit);
                    continue;
                }
            }
            // The rules' budget for this event: what is left of it bounds this run.
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                counters.budget_skips.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let cut = left < timeout;
            let engine = &self.inner.kind().engine;
            let cell = compiled
                .runtime
                .get_or(|| std::cell::RefCell::new(Runtime::new(engine, &compiled.ast)));
            let mut attempt = |nested: bool| {
                let call = sandbox::CallScope::enter(
                    compiled.label.clone(),
                    timeout.min(left),
                    trace.is_some(),
                    nested,
                );
                let result = trimtab_util::panics::catch(|| {
                    cell.borrow_mut().run(engine, scope, &compiled.ast)
                });
                let ops = cell.try_borrow().map_or(0, |r| r.global.num_operations);
                counters.operations.fetch_add(ops, Ordering::Relaxed);
                if !matches!(result, Ok(Ok(()))) {
                    *cell.borrow_mut() = Runtime::new(engine, &compiled.ast);
                }
                let (adjusts, reads) = call.finish_recorded();
                // Drop the rule's own variables; `user`, `event` and `now_ms` are constants, so
                // a rule cannot change what the next rule sees.
                scope.rewind(base);
                (result, adjusts, reads)
            };
            let nested = !compiled.plain_maps.load(Ordering::Relaxed);
            let (mut result, mut adjusts, mut reads) = attempt(nested);
            // A run that failed on an object read as a view (`let s = user.scroll; s.x = 1`)
            // runs again with plain maps, and if that succeeds the rule keeps plain maps.
            if nested && matches!(&result, Ok(Err(e)) if sandbox::view_may_fail(e)) {
                let again = attempt(false);
                if matches!(again.0, Ok(Ok(()))) {
                    compiled.plain_maps.store(true, Ordering::Relaxed);
                    if let Ok(Err(e)) = &result {
                        tracing::info!(
                            rule = %compiled.label,
                            error = %sandbox::runtime_error_info(&entry.file, e, limits.timeout_ms).message,
                            "the rule uses an object of `user` or `event` in a way its view does \
                             not support; it reads them as plain maps from now on"
                        );
                    }
                }
                (result, adjusts, reads) = again;
            }
            if cut && matches!(&result, Ok(Err(e)) if sandbox::is_timeout(e)) {
                // Stopped by the event's budget, not by its own deadline: not its failure.
                counters.budget_skips.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(rule = %compiled.label, "the rules' budget per event ran out");
                continue;
            }
            counters.runs.fetch_add(1, Ordering::Relaxed);
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(sandbox::runtime_error_info(
                    &entry.file,
                    &e,
                    limits.timeout_ms,
                )),
                Err(payload) => Some(sandbox::panic_error_info(&entry.file, payload.as_ref())),
            };
            match error {
                None => {
                    if let Some(rate) = compiled.health.succeeded(limits) {
                        self.disable_for_rate(compiled, rate);
                    }
                    let n = u64::try_from(adjusts.len()).unwrap_or(u64::MAX);
                    counters.adjustments.fetch_add(n, Ordering::Relaxed);
                    if let (Some((_, trace)), Some(reads)) = (&trace, reads) {
                        trace.borrow_mut().insert(reads, &adjusts);
                    }
                    out.extend(adjusts);
                }
                Some(info) => self.record_failure(compiled, info),
            }
        }
        // Let go of the user's data: the caller takes its state back once nothing holds it.
        scope.rewind(0);
        sandbox::set_arms(sandbox::Arms::None);
        sandbox::set_scorer(None);
    }

    /// Compiles a condition (a Rhai expression over `user`, e.g. experiment targeting) with the
    /// same sandboxed engine and limits as rules. `label` names it in error locations.
    pub fn compile_condition(&self, label: &str, source: &str) -> Result<Condition, RuleErrorInfo> {
        Ok(Condition {
            ast: Arc::new(self.inner.kind().compile(label, source)?),
        })
    }

    /// Evaluates a condition for `user`, sandboxed like a rule. An error, a limit hit or a
    /// non-boolean result counts as `false` (and is logged at debug level).
    pub fn check(&self, cond: &Condition, user: &rhai::Dynamic, now_ms: i64) -> bool {
        let mut scope = Scope::new();
        scope.push_constant_dynamic("user", user.clone());
        scope.push_constant("event", Dynamic::UNIT);
        scope.push_constant("now_ms", now_ms);
        let timeout = Duration::from_millis(self.limits().timeout_ms.max(1));
        let call = sandbox::CallScope::enter("condition".into(), timeout, false, false);
        let result = trimtab_util::panics::catch(|| {
            self.inner
                .kind()
                .engine
                .eval_ast_with_scope::<bool>(&mut scope, &cond.ast)
        });
        drop(call.finish());
        match result {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!("condition failed: {e}");
                false
            }
            Err(_) => false,
        }
    }

    /// Disables `compiled` for its failure rate `(failures, runs)` of the last window.
    fn disable_for_rate(&self, compiled: &Version, (fails, runs): (u32, u32)) {
        let health = &compiled.health;
        if health.disabled.swap(true, Ordering::Relaxed) {
            return;
        }
        let last = lock(&health.last_error)
            .as_ref()
            .map(sandbox::short_error)
            .unwrap_or_default();
        let reason = format!(
            "disabled: {fails} of its last {runs} runs failed (max_failure_percent {}); last: {last}",
            self.limits().max_failure_percent
        );
        tracing::warn!(rule = %compiled.label, "{reason}");
        *lock(&health.disabled_reason) = Some(reason);
    }

    fn record_failure(&self, compiled: &Version, info: RuleErrorInfo) {
        compiled.counters.failures.fetch_add(1, Ordering::Relaxed);
        let health = &compiled.health;
        let consecutive = health.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let limits = self.limits();
        let max = limits.max_consecutive_failures.max(1);
        let rate = health.window_run(true, limits.failure_window, limits.max_failure_percent);
        if consecutive >= max && !health.disabled.swap(true, Ordering::Relaxed) {
            let reason = format!(
                "disabled after {consecutive} consecutive failures; last: {}",
                sandbox::short_error(&info)
            );
            tracing::warn!(rule = %compiled.label, location = %info.location, "{reason}");
            *lock(&health.disabled_reason) = Some(reason);
        } else if let Some(rate) = rate {
            *lock(&health.last_error) = Some(info);
            self.disable_for_rate(compiled, rate);
            return;
        } else {
            tracing::debug!(rule = %compiled.label, location = %info.location, "rule failed: {}", info.message);
        }
        *lock(&health.last_error) = Some(info);
    }

    /// Whether no rule is loaded (then evaluating is skipped, and no view is built).
    pub fn is_empty(&self) -> bool {
        self.inner.guard().is_empty()
    }

    /// The status of every rule, sorted by name.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        self.inner.guard().values().map(|e| status(e)).collect()
    }

    /// The status of one rule.
    pub fn status(&self, name: &str) -> Result<RuleStatus, RulesError> {
        self.inner
            .get(name)
            .map(|e| status(&e))
            .ok_or_else(|| RulesError::NotFound(sandbox::truncate(name, 80)))
    }

    /// Whether the running version of rule `name` reads `user.scroll`, `event.props`, … as
    /// plain maps (after a run failed on their views, see `view`) rather than as views; None
    /// when no version runs.
    pub fn reads_plain_maps(&self, name: &str) -> Option<bool> {
        let e = self.inner.get(name)?;
        let live = e.live.as_ref()?;
        Some(live.plain_maps.load(Ordering::Relaxed))
    }

    /// Validates `source` (compiles it with the same sandboxed engine), then atomically writes
    /// `dir/{name}.rhai` (temp file, fsync, rename) and installs it at once, without waiting
    /// for the watcher. A compile error returns [`RulesError::Compile`] and writes nothing.
    /// Re-uploading a disabled rule re-enables it.
    pub fn put(&self, name: &str, source: &str) -> Result<RuleStatus, RulesError> {
        let entry = self.inner.put(name, source)?;
        Ok(status(&entry))
    }

    /// Removes `dir/{name}.rhai` and the rule. Returns whether there was anything to remove.
    pub fn delete(&self, name: &str) -> Result<bool, RulesError> {
        Ok(self.inner.delete(name)?)
    }
}

/// The status of one rule file.
fn status(entry: &RuleEntry) -> RuleStatus {
    let (enabled, disabled, disabled_reason, last_error, consecutive) = match &entry.live {
        Some(c) => {
            let disabled = c.health.disabled.load(Ordering::Relaxed);
            (
                !disabled,
                disabled,
                lock(&c.health.disabled_reason).clone(),
                lock(&c.health.last_error).clone(),
                c.health.consecutive.load(Ordering::Relaxed),
            )
        }
        None => (false, false, None, None, 0),
    };
    let state = if entry.error.is_some() {
        "compile_error"
    } else if disabled {
        "disabled"
    } else {
        "active"
    };
    let count = |f: fn(&Counters) -> &AtomicU64| {
        entry
            .live
            .as_ref()
            .map_or(0, |c| f(&c.counters).load(Ordering::Relaxed))
    };
    RuleStatus {
        name: entry.name.clone(),
        file: entry.file.clone(),
        enabled,
        state,
        compile_error: entry.error.clone(),
        disabled_reason,
        last_error,
        runs: count(|c| &c.runs),
        failures: count(|c| &c.failures),
        consecutive_failures: consecutive,
        adjustments: count(|c| &c.adjustments),
        replayed: count(|c| &c.replayed),
        budget_skips: count(|c| &c.budget_skips),
        operations: count(|c| &c.operations),
        loaded_at_ms: entry
            .live
            .as_ref()
            .map_or(entry.read_at_ms, |c| c.loaded_at_ms),
        source_sha256: entry
            .live
            .as_ref()
            .map_or_else(|| entry.sha256.clone(), |c| c.sha.clone()),
        on: entry.live.as_ref().and_then(|c| c.on.clone()),
    }
}

#[cfg(test)]
mod tests;
