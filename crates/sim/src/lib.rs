//! trimtab-sim: a seeded synthetic audience with known ground truth, and its command line
//! (the `trimtab-sim` binary, `src/main.rs`).
//!
//! - [`audience`]: user types (quick responders, deep explorers, selective clickers) with
//!   their own scroll/hover/dwell/click behaviour, device and time-of-day context, behaviour
//!   scripts in the SDK's wire shape, and the ground-truth click and conversion
//!   probabilities per variant.
//! - [`offline`]: logged bandit feedback ([`trimtab_learn::ope::LogRow`]) with per-row ground
//!   truth, computed without a server (the context vector is what the server would compute).
//! - [`online`]: drives a running server over real WebSockets and HTTP, and summarises what
//!   it decided against the ground truth (click rates, oracle/uniform reward, regret).
//!
//! A tool, not a part of the server: the `trimtab` binary does not link it (nor its HTTP and
//! WebSocket clients, ureq and tungstenite). It may use every crate below the server.

pub mod audience;
pub mod offline;
pub mod online;

#[cfg(test)]
mod learning_tests;
