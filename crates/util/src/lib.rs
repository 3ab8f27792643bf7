//! trimtab-util: the few helpers every layer of trimtab may use — atomic file replacement and
//! directory listing ([`fsutil`]), hot reload of a directory ([`watch`]), the one registry of
//! definition files that rules, experiments and bandits share ([`registry`]), expected panics
//! ([`panics`]), the allocator's release of freed memory ([`memory`]) and the wall clock ([`now_ms`]). It knows nothing of events, users, storage or HTTP, and must not.

pub mod fsutil;
pub mod memory;
pub mod panics;
pub mod registry;
pub mod watch;

/// Wall-clock time, milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
