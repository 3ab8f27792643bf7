//! trimtab-engine: the loop itself — per-user behavioural features ([`features`]), pure
//! decisions ([`decide`]: rules' requests admitted through caps, experiments and bandits),
//! experiments ([`experiments`]), bandit slots with their learner and trainer ([`bandits`]),
//! behavioural segments ([`segments`]), and the pipeline that runs them ([`pipeline`]: shards,
//! the log writer, the indexer), with the per-user hub of outbound socket queues
//! ([`delivery`]), the settings ([`config`]) and the Prometheus registry ([`metrics`]).
//!
//! Below it: trimtab-wire (what clients send), trimtab-rules (Rhai), trimtab-learn and
//! trimtab-stats (pure computation), trimtab-store (the only code that touches the disk's
//! tables) and trimtab-privacy. Above it: the server (HTTP, WebSocket sessions, dashboard,
//! CLI), which reaches the engine through [`pipeline::Pipeline`] and the registries. This crate
//! knows nothing of HTTP or actix and must not: queues and channels are its only interface.

pub mod bandits;
pub mod config;
pub mod decide;
pub mod delivery;
pub mod experiments;
pub mod features;
pub mod health;
pub mod lab;
pub mod metrics;
pub mod pipeline;
mod sched;
pub mod segments;
pub mod service;

pub use service::Engine;
