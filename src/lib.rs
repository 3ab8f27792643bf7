//! trimtab: a self-hosted engine for real-time content micro-adjustments, in one process.
//!
//! A page reports fine-grained behaviour (scroll, hover, dwell, clicks, context), the engine
//! updates that user's features, runs trigger rules, and pushes small adjustments back to the
//! same page over WebSocket within milliseconds. See `DESIGN.md` for the architecture.
//!
//! This crate is the server: HTTP handlers ([`api`]), WebSocket sessions and the live feed
//! ([`ws`]), wiring and graceful shutdown ([`app`]). It reaches the loop only through
//! [`trimtab_engine::Engine`] and does not depend on the store (the workspace makes the layers
//! a compile-time fact: a crate can only use the crates below it). The engine's and the lower
//! crates' modules are re-exported under their old names for the tests, benches and tools.

pub mod api;
pub mod app;
pub mod tls;
pub mod ws;

pub use trimtab_engine::{
    bandits, config, decide, delivery, experiments, features, lab, metrics, pipeline, segments,
};

pub use trimtab_learn as learn;
pub use trimtab_privacy as privacy;
pub use trimtab_rules as rules;
pub use trimtab_util::{fsutil, now_ms, watch};
pub use trimtab_wire as event;
