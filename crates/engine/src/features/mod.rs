//! Per-user behavioural features, updated event by event on the user's shard thread.
//!
//! [`UserState`] is what the engine knows about one pseudonymous user: scroll depth and velocity,
//! hover/dwell/click statistics per target (including interactions still going on), the recent
//! interaction sequence, sessions, context and consent, and what has been pushed to them
//! (current variant per slot, frequency-cap counters), and the session's behavioural signals
//! ([`signals`]). It is postcard-encoded and stored
//! sealed and checkpointed by its shard; `crate::decide::view` shows it to Rhai rules.
//!
//! Pure data and arithmetic: no I/O, no locks, no clocks (the caller passes `now_ms`). Kept
//! compact, since every cached user holds one: small maps are sorted vectors
//! ([`SmallMap`]) and sequence entries are shared strings ([`Sym`]).

pub mod context;
pub mod signals;
pub mod state;
pub mod sym;

pub use signals::Signals;
pub use state::{ExperimentRecord, FeatureConfig, Ongoing, SmallMap, TargetStats, UserState};
pub use sym::Sym;
