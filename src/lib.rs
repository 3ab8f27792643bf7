//! trimtab: a self-hosted engine for real-time content micro-adjustments, in one process.
//!
//! A page reports fine-grained behaviour (scroll, hover, dwell, clicks, context), the engine
//! updates that user's features, runs trigger rules, and pushes small adjustments back to the
//! same page over WebSocket within milliseconds. See `DESIGN.md` for the architecture.
//!
//! Layers point one way: `api` → `pipeline`/`delivery` → `features`/`rules` → `store`.

pub mod api;
pub mod app;
pub mod bandits;
pub mod config;
pub mod decide;
pub mod delivery;
pub mod event;
pub mod experiments;
pub mod features;
pub mod fsutil;
pub mod learn;
pub mod metrics;
pub mod pipeline;
pub mod privacy;
pub mod rules;
pub mod segments;
pub mod sim;
pub mod store;
pub mod watch;

/// Wall-clock time, milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
