//! The command line's argument structs and the subcommands that are not the server
//! (`train`); they call into the library crates and never the other way round.

pub mod train;
