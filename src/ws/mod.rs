//! The WebSocket endpoints: a page's session ([`session`]: auth by first message, event batches
//! into the pipeline, acks and adjustments out through the socket's queue of the engine's hub)
//! and the dashboard's live feed ([`live`]), both behind a [`guard`] that refuses oversized frames
//! at their header. They own the sockets (actix-ws), never user state.

pub mod guard;
pub mod live;
pub mod session;
