//! The command line's subcommands that are not the server (`health`, `train`, `keys`,
//! `rules`); they
//! call into the library crates and never the other way round.

pub mod health;
pub mod keys;
pub mod rules;
pub mod train;
