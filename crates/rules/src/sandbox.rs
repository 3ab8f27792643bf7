//! The sandboxed Rhai [`Engine`] and the per-call state that the sandbox needs.
//!
//! Owns: building the one shared engine (packages, limits, disabled symbols, print/debug
//! routing, the wall-clock deadline hook), the thread-local [`CallScope`] that carries the
//! running rule's name, deadline and collected `adjust()` calls, and the translation of Rhai
//! errors into [`RuleErrorInfo`].
//!
//! Threads: the engine is built once (by whoever calls `Rules::load`) and then shared
//! read-only by every shard worker thread; the call state is strictly thread-local, so two
//! threads evaluating at once never see each other's adjustments or deadlines.
//!
//! Must not: give scripts any file, network, clock, sleep or module access. `Engine::new_raw()`
//! has none and this file adds none; `LanguageCorePackage` is deliberately left out because it
//! contains `sleep()` (which would block a shard thread where neither the operation limit nor
//! the deadline can interrupt it).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage,
    BasicMathPackage, BasicStringPackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{Dynamic, Engine, EvalAltResult, ParseError, Position};

use super::{AdjustRequest, RuleErrorInfo, RuleLimits};

/// The token `on_progress` terminates a script with when its deadline has passed.
const TIMEOUT_TOKEN: &str = "trimtab:timeout";
/// The deadline is checked only every `DEADLINE_CHECK_MASK + 1` operations (`Instant::now()`
/// costs ~20 ns; an operation costs a few ns).
const DEADLINE_CHECK_MASK: u64 = 0xFF;
/// Longest message kept from a script's `print`, `debug` or `log` call, in characters.
pub(crate) const MAX_LOG_CHARS: usize = 256;
/// Longest error message kept in a status, in characters.
const MAX_ERROR_CHARS: usize = 300;
/// At most this many `log`/`print`/`debug` lines are emitted per rule run; the rest are dropped
/// so that one chatty rule cannot flood the log at event rate.
pub(crate) const MAX_LOGS_PER_RUN: u32 = 8;

/// State of the rule currently running on this thread.
pub(crate) struct CallState {
    /// Name of the running rule (for `adjust()` results and log lines).
    pub(crate) rule: std::sync::Arc<str>,
    /// Wall-clock deadline of this call.
    deadline: Instant,
    /// `adjust()` calls made so far, in order.
    pub(crate) adjusts: Vec<AdjustRequest>,
    /// Log lines emitted so far in this call.
    pub(crate) logs: u32,
    /// The reads made so far, when this run is recorded for `memo`.
    pub(crate) reads: Option<Vec<(super::memo::Read, Dynamic)>>,
    /// False once the run did something a replay would not (a log line, too many reads).
    pub(crate) memo_ok: bool,
    /// Whether `user.scroll`, `event.props`, … read as [`super::view::MapView`]s in this run.
    pub(crate) nested: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<CallState>> = const { RefCell::new(None) };
    /// Experiment arms of the user being evaluated on this thread, for `experiment("id")`;
    /// set by `Rules::evaluate` for the duration of one evaluation.
    static ARMS: RefCell<Arms> = const { RefCell::new(Arms::None) };
    /// Model scores for the user being evaluated, for `predict(kind, slot, variant)`.
    static SCORER: RefCell<Option<super::Scorer>> = const { RefCell::new(None) };
}

/// Sets the scorer that `predict()` calls on this thread (None: no model is served).
pub(crate) fn set_scorer(s: Option<super::Scorer>) {
    SCORER.with(|c| {
        if let Ok(mut slot) = c.try_borrow_mut() {
            *slot = s;
        }
    });
}

/// `predict(kind, slot, variant)`: the served model's score, or -1.0 when there is none.
pub(crate) fn predict(kind: &str, slot: &str, variant: &str) -> f64 {
    SCORER.with(|c| match c.try_borrow() {
        Ok(s) => s
            .as_ref()
            .and_then(|f| (f.0)(kind, slot, variant))
            .unwrap_or(-1.0),
        Err(_) => -1.0,
    })
}

/// Where `experiment(id)` finds the arms of the user being evaluated.
pub(crate) enum Arms {
    None,
    /// `id → arm` (a `user` given as a map, with an `experiments` map).
    Map(rhai::Map),
    /// The user's lazy view.
    View(super::view::UserView),
}

/// Sets the experiment arms that `experiment(id)` reads on this thread.
pub(crate) fn set_arms(arms: Arms) {
    ARMS.with(|a| {
        if let Ok(mut slot) = a.try_borrow_mut() {
            *slot = arms;
        }
    });
}

/// The arm of experiment `id` for the user being evaluated ("" when not in it).
pub(crate) fn arm_of(id: &str) -> String {
    ARMS.with(|a| match &*a.borrow() {
        Arms::None => String::new(),
        Arms::Map(m) => m.get(id).map(|v| v.to_string()).unwrap_or_default(),
        Arms::View(v) => v.source().experiment(id).unwrap_or_default().to_string(),
    })
}

/// Marks "rule `rule` is running on this thread" for as long as it lives.
///
/// Dropping it (also during unwinding) clears the thread-local state, so a panicking rule can
/// never leak its adjustments or deadline into the next call on this thread.
pub(crate) struct CallScope {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl CallScope {
    /// Enters a call of `rule` with a deadline of `timeout` from now; `record`: keep the
    /// run's reads for [`super::memo`]; `nested`: objects read as views (see `view`).
    pub(crate) fn enter(
        rule: std::sync::Arc<str>,
        timeout: Duration,
        record: bool,
        nested: bool,
    ) -> CallScope {
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now);
        CURRENT.with(|c| {
            if let Ok(mut slot) = c.try_borrow_mut() {
                *slot = Some(CallState {
                    rule,
                    deadline,
                    adjusts: Vec::new(),
                    logs: 0,
                    reads: record.then(Vec::new),
                    memo_ok: true,
                    nested,
                });
            }
        });
        CallScope {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Ends the call and returns the `adjust()` calls it collected, in order.
    pub(crate) fn finish(self) -> Vec<AdjustRequest> {
        self.finish_recorded().0
    }

    /// Ends the call: its `adjust()` calls, and its reads if it was recorded and a replay
    /// would be faithful (no log line, not too many reads).
    pub(crate) fn finish_recorded(
        self,
    ) -> (
        Vec<AdjustRequest>,
        Option<Vec<(super::memo::Read, Dynamic)>>,
    ) {
        // `self` is dropped at the end of this function, which clears the state again.
        CURRENT.with(|c| match c.try_borrow_mut() {
            Ok(mut slot) => match slot.take() {
                Some(s) => (s.adjusts, s.reads.filter(|_| s.memo_ok)),
                None => (Vec::new(), None),
            },
            Err(_) => (Vec::new(), None),
        })
    }
}

impl Drop for CallScope {
    fn drop(&mut self) {
        CURRENT.with(|c| {
            if let Ok(mut slot) = c.try_borrow_mut() {
                *slot = None;
            }
        });
    }
}

/// Runs `f` with the state of the rule running on this thread, or returns `None` when no rule
/// is running (e.g. a registered function called outside `evaluate`).
pub(crate) fn with_current<R>(f: impl FnOnce(&mut CallState) -> R) -> Option<R> {
    CURRENT.with(|c| match c.try_borrow_mut() {
        Ok(mut slot) => slot.as_mut().map(f),
        Err(_) => None,
    })
}

/// Whether the deadline of the call on this thread has passed.
fn deadline_passed() -> bool {
    CURRENT.with(|c| match c.try_borrow() {
        Ok(slot) => slot.as_ref().is_some_and(|s| Instant::now() >= s.deadline),
        Err(_) => false,
    })
}

/// Emits one script log line at `level` through `tracing`, rate limited per call and truncated.
pub(crate) fn script_log(level: tracing::Level, msg: &str) {
    let text = truncate(msg, MAX_LOG_CHARS);
    let emitted = with_current(|s| {
        s.memo_ok = false; // a replay would not log
        if s.logs >= MAX_LOGS_PER_RUN {
            return true;
        }
        s.logs += 1;
        if level == tracing::Level::INFO {
            tracing::info!(rule = %s.rule, "rule log: {text}");
        } else {
            tracing::debug!(rule = %s.rule, "rule print: {text}");
        }
        true
    });
    if emitted.is_none() {
        tracing::debug!("rule print outside evaluation: {text}");
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((idx, _)) => {
            let mut out = s[..idx].to_owned();
            out.push('…');
            out
        }
    }
}

/// Replaces the string functions whose output can be far larger than their inputs with
/// versions that compute the output's size first and refuse before allocating it. Rhai checks
/// `max_string_size` only on the value a function returns: `s.replace("y", t)` on two 16 KiB
/// strings built a 256 MiB string first (a shard blocked for 270 ms, +489 MiB of memory). `pad`
/// checks its length up front already; `+` at most doubles its inputs.
fn guard_amplifiers(lib: &mut rhai::Module, max: usize) {
    use rhai::{FuncRegistration, ImmutableString};
    type Res = Result<(), Box<EvalAltResult>>;
    fn replace(s: &mut ImmutableString, find: &str, with: &str, max: usize) -> Res {
        if s.is_empty() {
            return Ok(());
        }
        if with.len() > find.len() {
            let n = s.matches(find).count();
            let len = s.len() + n.saturating_mul(with.len() - find.len());
            if len > max {
                return Err(Box::new(EvalAltResult::ErrorDataTooLarge(
                    format!(
                        "replace() would make a string of {len} bytes, over the {max}-byte limit"
                    ),
                    Position::NONE,
                )));
            }
        }
        *s = s.replace(find, with).into();
        Ok(())
    }
    let reg = || FuncRegistration::new("replace").with_purity(false);
    reg().set_into_module(
        lib,
        move |s: &mut ImmutableString, find: &str, with: &str| replace(s, find, with, max),
    );
    reg().set_into_module(
        lib,
        move |s: &mut ImmutableString, find: &str, with: char| {
            replace(s, find, with.encode_utf8(&mut [0; 4]), max)
        },
    );
    reg().set_into_module(
        lib,
        move |s: &mut ImmutableString, find: char, with: &str| {
            replace(s, find.encode_utf8(&mut [0; 4]), with, max)
        },
    );
    reg().set_into_module(
        lib,
        move |s: &mut ImmutableString, find: char, with: char| {
            replace(
                s,
                find.encode_utf8(&mut [0; 4]),
                with.encode_utf8(&mut [0; 4]),
                max,
            )
        },
    );
}

/// Builds the sandboxed engine shared by compilation and evaluation.
pub(crate) fn build_engine(limits: &RuleLimits) -> Engine {
    let mut engine = Engine::new_raw();

    // Packages: everything `CorePackage` has except `LanguageCorePackage` (sleep, exit,
    // parse_json, tag), plus logic, math, strings, arrays, maps. No time, no blobs. Flattened
    // into one module: every function call that is not cached yet looks the name up in each
    // global module in turn, so one module instead of nine makes those lookups cheap.
    let mut lib = rhai::Module::new();
    for m in [
        ArithmeticPackage::new().as_shared_module(),
        BasicIteratorPackage::new().as_shared_module(),
        BasicFnPackage::new().as_shared_module(),
        LogicPackage::new().as_shared_module(),
        BasicMathPackage::new().as_shared_module(),
        BasicStringPackage::new().as_shared_module(),
        MoreStringPackage::new().as_shared_module(),
        BasicArrayPackage::new().as_shared_module(),
        BasicMapPackage::new().as_shared_module(),
    ] {
        lib.combine_flatten((*m).clone());
    }
    guard_amplifiers(&mut lib, limits.max_string_size.max(1));
    lib.build_index();
    engine.register_global_module(lib.into());

    // Limits. A zero would mean "unlimited" to Rhai, so every limit is at least 1.
    engine.set_max_operations(limits.max_operations.max(1));
    engine.set_max_call_levels(limits.max_call_levels.max(1));
    engine.set_max_expr_depths(
        limits.max_expr_depth.max(1),
        limits.max_function_expr_depth.max(1),
    );
    engine.set_max_string_size(limits.max_string_size.max(1));
    engine.set_max_array_size(limits.max_array_size.max(1));
    engine.set_max_map_size(limits.max_map_size.max(1));
    engine.set_max_variables(limits.max_variables.max(1));
    engine.set_max_functions(limits.max_functions.max(1));
    // No string interner: it is one global lock taken at run time (string interpolation,
    // `let`, `for`) by every shard thread, and its eviction scans the whole cache, which made
    // string-heavy scripts quadratic.
    engine.set_max_strings_interned(0);

    // Language surface.
    engine.set_strict_variables(true);
    engine.disable_symbol("eval");

    // print/debug go to tracing (new_raw would otherwise drop them silently).
    engine.on_print(|s| script_log(tracing::Level::DEBUG, s));
    engine.on_debug(|s, _src, pos| {
        let line = match pos.line() {
            Some(l) => format!("line {l}: {s}"),
            None => s.to_owned(),
        };
        script_log(tracing::Level::DEBUG, &line);
    });

    // Wall-clock deadline, checked every 256 operations.
    engine.on_progress(|ops| {
        if ops & DEADLINE_CHECK_MASK != 0 {
            return None;
        }
        if deadline_passed() {
            Some(Dynamic::from(TIMEOUT_TOKEN))
        } else {
            None
        }
    });

    // Rhai checks `max_map_size` after operators and function calls, but not when an index or
    // property assignment (`m[k] = v`, `m.k = v`) adds a key, so a loop could grow a map until
    // the operation limit (tens of thousands of entries, up to 16 KiB keys each). Check the
    // map a script touches when it is accessed by name: its own length every time (O(1)), its
    // nested content every 32nd access (bounded by the limit, early exit).
    let max_map = limits.max_map_size.max(1);
    // `on_var` is marked deprecated only as "volatile, may change"; it is stable in 1.27 and
    // `tests::size_limits_stop_runaway_growth` catches a change of behaviour.
    #[allow(deprecated)]
    engine.on_var(move |name, _index, ctx| {
        // The inputs are constants: nothing to check (and the commonest names by far).
        if name == "user" || name == "event" || name == "now_ms" {
            return Ok(None);
        }
        // One pass, newest first (a `let` can shadow): constness and value together.
        let Some((_, constant, value)) = ctx.scope().iter_raw().find(|(n, _, _)| *n == name) else {
            return Ok(None);
        };
        if constant {
            return Ok(None);
        }
        if let Some(map) = value.read_lock::<rhai::Map>() {
            let too_large = map.len() > max_map
                || (deep_check_due() && nested_entries(value, max_map) > max_map);
            if too_large {
                return Err(Box::new(EvalAltResult::ErrorDataTooLarge(
                    "Size of object map".to_owned(),
                    Position::NONE,
                )));
            }
        }
        Ok(None)
    });

    super::api::register(&mut engine);
    engine
}

thread_local! {
    static VAR_ACCESSES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// True on every 32nd call on this thread.
fn deep_check_due() -> bool {
    VAR_ACCESSES.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % 32 == 0
    })
}

/// Map entries in `value`, nested maps and arrays included (to a nesting depth of 32);
/// stops counting once past `limit`.
fn nested_entries(value: &Dynamic, limit: usize) -> usize {
    fn walk(v: &Dynamic, limit: usize, depth: u32, count: &mut usize) {
        if *count > limit || depth > 32 {
            return;
        }
        if let Some(map) = v.read_lock::<rhai::Map>() {
            *count += map.len();
            for x in map.values() {
                walk(x, limit, depth + 1, count);
            }
        } else if let Some(arr) = v.read_lock::<rhai::Array>() {
            for x in arr.iter() {
                walk(x, limit, depth + 1, count);
            }
        }
    }
    let mut count = 0;
    walk(value, limit, 0, &mut count);
    count
}

/// `file:line:col` (or just `file` when the position is unknown).
fn location(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_owned(),
    }
}

/// Describes a compile (parse) error of `file`.
pub(crate) fn compile_error_info(file: &str, err: &ParseError) -> RuleErrorInfo {
    let pos = err.position();
    RuleErrorInfo {
        message: truncate(&err.err_type().to_string(), MAX_ERROR_CHARS),
        line: pos.line(),
        column: pos.position(),
        location: location(file, pos),
    }
}

/// Whether `err` is a kind of error that using an object read as a [`super::view::MapView`]
/// can cause where a plain map would not (a missing function or setter, a type mismatch), so
/// that the run is worth trying again with plain maps.
pub(crate) fn view_may_fail(err: &EvalAltResult) -> bool {
    use EvalAltResult as E;
    match err {
        E::ErrorInFunctionCall(_, _, inner, _) => view_may_fail(inner),
        E::ErrorFunctionNotFound(..)
        | E::ErrorPropertyNotFound(..)
        | E::ErrorIndexingType(..)
        | E::ErrorDotExpr(..)
        | E::ErrorFor(..)
        | E::ErrorMismatchDataType(..)
        | E::ErrorMismatchOutputType(..)
        | E::ErrorNonPureMethodCallOnConstant(..)
        | E::ErrorAssignmentToConstant(..) => true,
        _ => false,
    }
}

/// Whether `err` is the run's deadline passing (possibly inside a script-defined function).
pub(crate) fn is_timeout(err: &EvalAltResult) -> bool {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => is_timeout(inner),
        EvalAltResult::ErrorTerminated(token, ..) => token
            .clone()
            .into_string()
            .is_ok_and(|t| t == TIMEOUT_TOKEN),
        _ => false,
    }
}

/// Describes a runtime error of `file`; `timeout_ms` names the deadline in timeout messages.
pub(crate) fn runtime_error_info(
    file: &str,
    err: &EvalAltResult,
    timeout_ms: u64,
) -> RuleErrorInfo {
    // Walk into errors raised inside script-defined functions: the innermost error says what
    // went wrong and where; the function names say how we got there.
    let mut err = err;
    let mut outer_pos = err.position();
    let mut trail = Vec::new();
    while let EvalAltResult::ErrorInFunctionCall(name, _src, inner, pos) = err {
        trail.push(name.clone());
        if !pos.is_none() {
            outer_pos = *pos;
        }
        err = inner;
    }
    let pos = if err.position().is_none() {
        outer_pos
    } else {
        err.position()
    };
    let what = match err {
        EvalAltResult::ErrorTooManyOperations(..) => "operation limit exceeded".to_owned(),
        EvalAltResult::ErrorTerminated(token, ..)
            if token
                .clone()
                .into_string()
                .is_ok_and(|t| t == TIMEOUT_TOKEN) =>
        {
            format!("timeout after {timeout_ms} ms")
        }
        EvalAltResult::ErrorStackOverflow(..) => "call depth limit exceeded".to_owned(),
        EvalAltResult::ErrorTooManyVariables(..) => "variable limit exceeded".to_owned(),
        EvalAltResult::ErrorDataTooLarge(what, ..) => format!("size limit exceeded: {what}"),
        EvalAltResult::ErrorRuntime(value, ..) => value.to_string(),
        other => {
            // Display appends " (line L, position C)"; the position is reported separately.
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            match text.strip_suffix(&suffix) {
                Some(t) if !other.position().is_none() => t.to_owned(),
                _ => text,
            }
        }
    };
    let message = if trail.is_empty() {
        what
    } else {
        format!("{what} (in function {})", trail.join(" > "))
    };
    RuleErrorInfo {
        message: truncate(&message, MAX_ERROR_CHARS),
        line: pos.line(),
        column: pos.position(),
        location: location(file, pos),
    }
}

/// Describes a panic caught while running a rule of `file`.
pub(crate) fn panic_error_info(file: &str, payload: &(dyn std::any::Any + Send)) -> RuleErrorInfo {
    let detail =
        trimtab_util::panics::text(payload).unwrap_or_else(|| "unknown payload".to_owned());
    RuleErrorInfo {
        message: truncate(&format!("panic: {detail}"), MAX_ERROR_CHARS),
        line: None,
        column: None,
        location: file.to_owned(),
    }
}

/// `message at line L` (or just `message`), as used in disabled reasons.
pub(crate) fn short_error(info: &RuleErrorInfo) -> String {
    match info.line {
        Some(l) => format!("{} at line {l}", info.message),
        None => info.message.clone(),
    }
}
