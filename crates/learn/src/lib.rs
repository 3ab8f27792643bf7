//! trimtab-learn: learning to decide, over feature vectors. Contextual bandits per slot
//! ([`bandit`]), off-policy evaluation of logged decisions ([`ope`]), the dense linear algebra
//! both need ([`linalg`]) and a synthetic environment with known ground truth for tests and
//! benchmarks ([`sim`]), a supervised click model (a small MLP trained with candle) with its
//! model registry ([`model`]), and the set of served models ([`serving`]).
//!
//! Everything here is pure computation over in-memory data: no I/O besides the readers and
//! writers handed in and the model registry's directory, no threads, no locks. It takes
//! feature vectors and must not name the product's user state, events or storage: the engine
//! builds the context vector of a decision (`trimtab::features::context`). The learner thread
//! owns mutable policies; shards decide with restored [`bandit::Snapshot`]s. See
//! `docs/ope.md` for the log format and the estimators.

pub mod bandit;
pub mod linalg;
pub mod model;
pub mod ope;
pub mod serving;
pub mod sim;

#[cfg(test)]
mod tests;
