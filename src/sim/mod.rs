//! `trimtab simulate`: a seeded synthetic audience with known ground truth.
//!
//! - [`audience`]: user types (quick responders, deep explorers, selective clickers) with
//!   their own scroll/hover/dwell/click behaviour, device and time-of-day context, behaviour
//!   scripts in the SDK's wire shape, and the ground-truth click and conversion
//!   probabilities per variant.
//! - [`offline`]: logged bandit feedback ([`crate::learn::ope::LogRow`]) with per-row ground
//!   truth, computed without a server (the context vector is what the server would compute).
//! - [`online`]: drives a running server over real WebSockets and HTTP, and summarises what
//!   it decided against the ground truth (click rates, oracle/uniform reward, regret).
//! - [`cli`]: the `simulate` subcommand.
//!
//! Nothing here runs inside the server.

pub mod audience;
pub mod cli;
pub mod offline;
pub mod online;

#[cfg(test)]
mod learning_tests;
