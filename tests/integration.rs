//! End-to-end tests: each test starts the real `trimtab` binary (its own process, free port and
//! temporary data dir) and talks to it over real HTTP and WebSocket. One test binary, so linking
//! happens once; the modules live in `tests/integration/`.
//!
//! Run with `cargo test --test integration`.

#[path = "integration/support.rs"]
mod support;

#[path = "integration/anonymous.rs"]
mod anonymous;
#[path = "integration/backpressure.rs"]
mod backpressure;
#[path = "integration/bandits.rs"]
mod bandits;
#[path = "integration/cluster.rs"]
mod cluster;
#[path = "integration/durability.rs"]
mod durability;
#[path = "integration/experiments.rs"]
mod experiments;
#[path = "integration/faults.rs"]
mod faults;
#[path = "integration/hostile.rs"]
mod hostile;
#[path = "integration/hot_reload.rs"]
mod hot_reload;
#[path = "integration/learning.rs"]
mod learning;
#[path = "integration/ope.rs"]
mod ope;
#[path = "integration/privacy.rs"]
mod privacy;
#[path = "integration/retention.rs"]
mod retention;
#[path = "integration/rule_lab.rs"]
mod rule_lab;
#[path = "integration/rules_fire.rs"]
mod rules_fire;
#[path = "integration/sandbox.rs"]
mod sandbox;
#[path = "integration/segments.rs"]
mod segments;
#[path = "integration/signals.rs"]
mod signals;
#[path = "integration/simulate.rs"]
mod simulate;
#[path = "integration/startup.rs"]
mod startup;
#[path = "integration/tls.rs"]
mod tls;
#[path = "integration/tokens.rs"]
mod tokens;
#[path = "integration/train.rs"]
mod train;
#[path = "integration/validation.rs"]
mod validation;
