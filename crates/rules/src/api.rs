//! The functions rule scripts can call: `adjust`, `log` and the read-only helpers on the
//! `user` map (`hover_ms`, `seq_last`, `hour`, ...). `scripts/README.md` documents them.
//!
//! Threads: registered once into the shared engine; called on whichever shard worker thread is
//! evaluating, always inside a `sandbox::CallScope`, whose thread-local state receives the
//! `adjust()` calls. Helpers only read their arguments: they are registered as *pure* so that
//! they can be called as methods on the constant `user` map, and a missing target or field
//! yields 0 / false / "" instead of an error.

use std::collections::BTreeMap;

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FuncRegistration, Map, NativeCallContext, FLOAT, INT,
};

use super::memo::{self, Read};
use super::sandbox::{script_log, with_current};
use super::view::{self, UserView};
use super::AdjustRequest;

/// Longest slot, variant or param name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most params per `adjust()` call.
pub const MAX_PARAMS: usize = 16;
/// Longest param value (after `to_string`), in characters.
pub const MAX_PARAM_VALUE_CHARS: usize = 512;
/// Most `adjust()` calls per rule run.
pub const MAX_ADJUSTS_PER_RUN: usize = 16;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;
type Str = rhai::ImmutableString;

/// Registers a pure (read-only) function, callable as a method on the constant `user`.
macro_rules! pure {
    ($engine:expr, $name:literal, $func:expr) => {
        FuncRegistration::new($name)
            .with_purity(true)
            .register_into_engine($engine, $func)
    };
}

/// Registers every script-visible function into `engine`.
pub(crate) fn register(engine: &mut Engine) {
    FuncRegistration::new("adjust")
        .with_volatility(true)
        .register_into_engine(
            engine,
            |ctx: NativeCallContext, slot: &str, variant: &str| -> RhaiResult<()> {
                adjust(&ctx, slot, variant, None)
            },
        );
    FuncRegistration::new("adjust")
        .with_volatility(true)
        .register_into_engine(
            engine,
            |ctx: NativeCallContext, slot: &str, variant: &str, params: Map| -> RhaiResult<()> {
                adjust(&ctx, slot, variant, Some(&params))
            },
        );
    FuncRegistration::new("adjust")
        .with_volatility(true)
        .register_into_engine(
            engine,
            |ctx: NativeCallContext,
             slot: &str,
             variant: &str,
             params: view::MapView|
             -> RhaiResult<()> { adjust(&ctx, slot, variant, Some(&params.whole())) },
        );
    FuncRegistration::new("experiment")
        .with_volatility(true)
        .register_into_engine(engine, |id: Str| memo::global(Read::Arm(id)));
    pure!(engine, "experiment", |u: &mut Map, id: &str| {
        u.get("experiments")
            .and_then(|e| {
                e.read_lock::<Map>()
                    .and_then(|m| m.get(id).map(|v| v.to_string()))
            })
            .unwrap_or_default()
    });
    FuncRegistration::new("predict")
        .with_volatility(true)
        .register_into_engine(engine, |kind: Str, slot: Str, variant: Str| {
            memo::global(Read::Predict(kind, slot, variant))
        });
    FuncRegistration::new("log")
        .with_volatility(true)
        .register_into_engine(engine, |msg: Dynamic| {
            script_log(tracing::Level::INFO, &msg.to_string())
        });

    pure!(engine, "hover_ms", |u: &mut Map, t: &str| {
        target_int(u, t, "hover_ms").saturating_add(target_int(u, t, "hovering_ms"))
    });
    pure!(engine, "hovering_ms", |u: &mut Map, t: &str| {
        target_int(u, t, "hovering_ms")
    });
    pure!(engine, "hover_count", |u: &mut Map, t: &str| {
        target_int(u, t, "hover_count")
    });
    pure!(engine, "dwell_ms", |u: &mut Map, t: &str| dwell(u, t));
    pure!(engine, "clicks", |u: &mut Map, t: &str| target_int(
        u, t, "clicks"
    ));
    pure!(engine, "seen", |u: &mut Map, t: &str| dwell(u, t) > 0);
    pure!(engine, "seq_last", |u: &mut Map, n: INT| seq_last(u, n));
    pure!(engine, "seq_contains", |u: &mut Map, entry: &str| {
        with_sequence(u, |seq| seq.iter().any(|e| str_eq(e, entry)))
    });
    pure!(engine, "seq_ends_with", |u: &mut Map, suffix: Array| {
        seq_ends_with(u, &suffix)
    });
    pure!(engine, "seq_count", |u: &mut Map, prefix: &str| {
        with_sequence(u, |seq| {
            let n = seq.iter().filter(|e| str_starts_with(e, prefix)).count();
            INT::try_from(n).unwrap_or(INT::MAX)
        })
    });
    pure!(
        engine,
        "seq_count_last",
        |u: &mut Map, n: INT, prefix: &str| {
            with_sequence(u, |seq| {
                let n = usize::try_from(n).unwrap_or(0).min(seq.len());
                let c = seq[seq.len() - n..]
                    .iter()
                    .filter(|e| str_starts_with(e, prefix))
                    .count();
                INT::try_from(c).unwrap_or(INT::MAX)
            })
        }
    );
    pure!(engine, "hour", |u: &mut Map| hour(u));
    pure!(engine, "is_mobile", |u: &mut Map| {
        nested(u, &["context", "device"]).is_some_and(|d| str_eq(&d, "mobile"))
    });
    pure!(engine, "showing", |u: &mut Map, slot: &str| {
        nested(u, &["adjustments", slot])
            .and_then(|v| v.into_immutable_string().ok())
            .map(|s| s.to_string())
            .unwrap_or_default()
    });
    pure!(engine, "on_page", |u: &mut Map, prefix: &str| {
        nested(u, &["page"]).is_some_and(|p| str_starts_with(&p, prefix))
    });
    pure!(engine, "scrolled_past", |u: &mut Map, pct: FLOAT| {
        scrolled_past(u, pct)
    });
    pure!(engine, "scrolled_past", |u: &mut Map, pct: INT| {
        scrolled_past(u, pct as FLOAT)
    });

    // The same helpers on the lazy view the engine passes (see `view`); every read goes
    // through `memo`, which records it when the run is being remembered.
    view::register(engine);
    pure!(engine, "experiment", |u: &mut UserView, id: Str| {
        memo::user(u, Read::UserExperiment(id))
    });
    pure!(engine, "hover_ms", |u: &mut UserView, t: Str| memo::user(
        u,
        Read::HoverMs(t)
    ));
    pure!(
        engine,
        "hovering_ms",
        |u: &mut UserView, t: Str| memo::user(u, Read::HoveringMs(t))
    );
    pure!(
        engine,
        "hover_count",
        |u: &mut UserView, t: Str| memo::user(u, Read::HoverCount(t))
    );
    pure!(engine, "dwell_ms", |u: &mut UserView, t: Str| memo::user(
        u,
        Read::DwellMs(t)
    ));
    pure!(engine, "clicks", |u: &mut UserView, t: Str| memo::user(
        u,
        Read::Clicks(t)
    ));
    pure!(engine, "seen", |u: &mut UserView, t: Str| memo::user(
        u,
        Read::Seen(t)
    ));
    pure!(engine, "seq_last", |u: &mut UserView, n: INT| memo::user(
        u,
        Read::SeqLast(n)
    ));
    pure!(engine, "seq_contains", |u: &mut UserView, e: Str| {
        memo::user(u, Read::SeqContains(e))
    });
    pure!(
        engine,
        "seq_ends_with",
        |u: &mut UserView, suffix: Array| { memo::user(u, Read::SeqEndsWith(suffix)) }
    );
    pure!(engine, "seq_count", |u: &mut UserView, p: Str| memo::user(
        u,
        Read::SeqCount(p)
    ));
    pure!(
        engine,
        "seq_count_last",
        |u: &mut UserView, n: INT, p: Str| { memo::user(u, Read::SeqCountLast(n, p)) }
    );
    pure!(engine, "hour", |u: &mut UserView| memo::user(u, Read::Hour));
    pure!(engine, "is_mobile", |u: &mut UserView| memo::user(
        u,
        Read::IsMobile
    ));
    pure!(engine, "showing", |u: &mut UserView, slot: Str| memo::user(
        u,
        Read::Showing(slot)
    ));
    pure!(engine, "on_page", |u: &mut UserView, prefix: Str| {
        memo::user(u, Read::OnPage(prefix))
    });
    pure!(engine, "scrolled_past", |u: &mut UserView, pct: FLOAT| {
        memo::user(u, Read::ScrolledPast(pct))
    });
    pure!(engine, "scrolled_past", |u: &mut UserView, pct: INT| {
        memo::user(u, Read::ScrolledPast(pct as FLOAT))
    });

    #[cfg(test)]
    FuncRegistration::new("__test_panic")
        .with_volatility(true)
        .register_into_engine(engine, || -> INT { panic!("test panic") });
}

/// Validates one `adjust()` call and appends it to the running call's results.
fn adjust(
    ctx: &NativeCallContext,
    slot: &str,
    variant: &str,
    params: Option<&Map>,
) -> RhaiResult<()> {
    let fail = |msg: String| -> RhaiResult<()> {
        Err(Box::new(EvalAltResult::ErrorRuntime(
            format!("adjust(): {msg}").into(),
            ctx.call_position(),
        )))
    };
    if let Err(why) = check_name(slot) {
        return fail(format!("invalid slot {:?}: {why}", clip(slot)));
    }
    if let Err(why) = check_name(variant) {
        return fail(format!("invalid variant {:?}: {why}", clip(variant)));
    }
    let mut out = BTreeMap::new();
    if let Some(params) = params {
        if params.len() > MAX_PARAMS {
            return fail(format!(
                "{} params given, at most {MAX_PARAMS} allowed",
                params.len()
            ));
        }
        for (key, value) in params {
            if let Err(why) = check_name(key) {
                return fail(format!("invalid param name {:?}: {why}", clip(key)));
            }
            let text = view::display(value);
            if text.chars().count() > MAX_PARAM_VALUE_CHARS {
                return fail(format!(
                    "param {key:?} is longer than {MAX_PARAM_VALUE_CHARS} characters"
                ));
            }
            out.insert(key.to_string(), text);
        }
    }
    let pushed = with_current(|state| {
        if state.adjusts.len() >= MAX_ADJUSTS_PER_RUN {
            return Err(format!(
                "more than {MAX_ADJUSTS_PER_RUN} adjust() calls in one run"
            ));
        }
        state.adjusts.push(AdjustRequest {
            rule: state.rule.to_string(),
            slot: slot.to_owned(),
            variant: variant.to_owned(),
            params: out,
        });
        Ok(())
    });
    match pushed {
        Some(Ok(())) => Ok(()),
        Some(Err(msg)) => fail(msg),
        None => fail("called outside a rule evaluation".to_owned()),
    }
}

/// A slot, variant or param name: 1-64 characters from `[A-Za-z0-9_.-]`.
fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err("longer than 64 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("only A-Z a-z 0-9 _ - . are allowed");
    }
    Ok(())
}

/// Shortens a user-supplied string for an error message.
fn clip(s: &str) -> String {
    super::sandbox::truncate(s, 40)
}

/// `map[k1][k2]...`, or `None` if any step is missing or not a map.
fn nested(map: &Map, path: &[&str]) -> Option<Dynamic> {
    let (first, rest) = path.split_first()?;
    let mut cur = map.get(*first)?.clone();
    for key in rest {
        let next = cur.read_lock::<Map>()?.get(*key)?.clone();
        cur = next;
    }
    Some(cur)
}

/// An int or float field as an int (floats truncated); anything else is 0.
fn to_int(v: &Dynamic) -> INT {
    if let Ok(i) = v.as_int() {
        i
    } else if let Ok(f) = v.as_float() {
        if f.is_finite() {
            f as INT
        } else {
            0
        }
    } else {
        0
    }
}

/// `user.targets[target][field]` as an int, 0 when missing.
fn target_int(user: &Map, target: &str, field: &str) -> INT {
    nested(user, &["targets", target, field])
        .map(|v| to_int(&v))
        .unwrap_or(0)
}

/// Total dwell including the ongoing in-view time.
fn dwell(user: &Map, target: &str) -> INT {
    target_int(user, target, "dwell_ms").saturating_add(target_int(user, target, "in_view_ms"))
}

/// `user.context.hour`, else `user.local_hour`, else -1 (unknown: no hour range matches).
/// `user.scrolled_past(pct)` on a map: the deeper of `scroll.depth` and `scroll.max_depth`
/// is past `pct` (a missing value counts as 0).
fn scrolled_past(user: &Map, pct: FLOAT) -> bool {
    let at = |k: &str| {
        nested(user, &["scroll", k])
            .filter(|v| v.is_int() || v.is_float())
            .map_or(0.0, |v| {
                v.as_float().unwrap_or_else(|_| to_int(&v) as FLOAT)
            })
    };
    at("depth").max(at("max_depth")) > pct
}

fn hour(user: &Map) -> INT {
    [
        nested(user, &["context", "hour"]),
        nested(user, &["local_hour"]),
    ]
    .into_iter()
    .flatten()
    .find(|v| v.is_int() || v.is_float())
    .map(|v| to_int(&v))
    .filter(|h| (0..24).contains(h))
    .unwrap_or(-1)
}

/// Runs `f` over `user.sequence` (an empty slice when missing or not an array).
fn with_sequence<R>(user: &Map, f: impl FnOnce(&[Dynamic]) -> R) -> R {
    match user.get("sequence").and_then(|s| s.read_lock::<Array>()) {
        Some(seq) => f(&seq),
        None => f(&[]),
    }
}

/// The last `n` sequence entries, oldest first.
fn seq_last(user: &Map, n: INT) -> Array {
    let n = usize::try_from(n).unwrap_or(0);
    with_sequence(user, |seq| seq[seq.len().saturating_sub(n)..].to_vec())
}

/// Whether the sequence ends with `suffix`, in order.
fn seq_ends_with(user: &Map, suffix: &Array) -> bool {
    with_sequence(user, |seq| {
        if suffix.len() > seq.len() {
            return false;
        }
        seq[seq.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| match b.read_lock::<rhai::ImmutableString>() {
                Some(b) => str_eq(a, &b),
                None => str_eq(a, &b.to_string()),
            })
    })
}

fn str_eq(v: &Dynamic, s: &str) -> bool {
    v.read_lock::<rhai::ImmutableString>()
        .is_some_and(|v| v.as_str() == s)
}

fn str_starts_with(v: &Dynamic, prefix: &str) -> bool {
    v.read_lock::<rhai::ImmutableString>()
        .is_some_and(|v| v.starts_with(prefix))
}
