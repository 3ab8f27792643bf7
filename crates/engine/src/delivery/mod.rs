//! Delivery: the per-user hub of open WebSocket sessions' outbound queues and the frames put
//! into them (the session tasks that own the sockets are the server's, `trimtab::ws`).
//!
//! Every socket has **one** outbound queue ([`SocketTx`]) that carries everything the server
//! sends it: the writer thread puts a batch's `ack` straight into the queue of the socket that
//! sent the batch, and pushes adjustments through the [`Hub`], which maps a pseudonymous user
//! to the queues of that user's open sockets. Frames are serialised once ([`frames`]) and shared
//! (`ByteString` clones are reference counts). Sending never blocks (`try_send`): a socket whose
//! queue is full is too slow and is closed (the client retries what was not acknowledged), so
//! one stuck tab cannot hold up the loop. Nothing is ever sent to a socket of another user.

pub mod frames;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytestring::ByteString;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use trimtab_privacy::UserKey;

/// A message for one socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame.
    Text(ByteString),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// The outbound queue of one socket.
pub type SocketTx = mpsc::Sender<Outbound>;

struct Handle {
    id: u64,
    tx: SocketTx,
}

pub struct Hub {
    sessions: RwLock<HashMap<UserKey, Vec<Handle>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// The live feed of the admin dashboard (events and adjustments as they happen).
    tail: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Cluster mode: sends a frame on to the other nodes holding the user's sockets;
    /// returns to how many nodes.
    forward: std::sync::OnceLock<Forward>,
}

/// See [`Hub::set_forward`].
pub type Forward = Box<dyn Fn(&UserKey, &ByteString) -> usize + Send + Sync>;

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            sessions: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            tail: tokio::sync::broadcast::channel(1024).0,
            forward: std::sync::OnceLock::new(),
        }
    }

    /// Publishes a live-feed item, built only if a dashboard is listening. Never blocks: a
    /// dashboard that falls behind skips items.
    pub fn publish(&self, build: impl FnOnce() -> String) {
        if self.tail.receiver_count() > 0 {
            let _ = self.tail.send(build().into());
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.tail.subscribe()
    }

    /// Registers a socket of `user`; returns its id (for [`Hub::unregister`]).
    pub fn register(&self, user: UserKey, tx: SocketTx) -> u64 {
        self.try_register(user, tx, 0).expect("no cap")
    }

    /// Registers a socket of `user` unless the user has `max` open already (0 = no cap);
    /// checked and registered under one lock, so concurrent sockets cannot all slip in.
    pub fn try_register(&self, user: UserKey, tx: SocketTx, max: usize) -> Option<u64> {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let socks = map.entry(user).or_default();
        if max > 0 && socks.len() >= max {
            if socks.is_empty() {
                map.remove(&user);
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        socks.push(Handle { id, tx });
        self.metrics.ws_sessions.inc();
        Some(id)
    }

    pub fn unregister(&self, user: &UserKey, id: u64) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get_mut(user) {
            let before = v.len();
            v.retain(|h| h.id != id);
            if v.len() < before {
                self.metrics.ws_sessions.dec();
            }
            if v.is_empty() {
                map.remove(user);
            }
        }
    }

    /// Cluster mode: every pushed frame also goes to `f`, which sends it on to the other
    /// nodes holding sockets of the user (set once, at start).
    pub fn set_forward(&self, f: Forward) {
        let _ = self.forward.set(f);
    }

    /// Sends `frame` to every open socket of `user`, here and (cluster mode) on the other
    /// nodes that hold one. Returns how many sockets (or nodes) got it.
    pub fn push(&self, user: &UserKey, frame: &ByteString) -> usize {
        let here = self.push_local(user, frame);
        match self.forward.get() {
            Some(f) => here + f(user, frame),
            None => here,
        }
    }

    /// Sends `frame` to this node's open sockets of `user`. Returns how many got it.
    pub fn push_local(&self, user: &UserKey, frame: &ByteString) -> usize {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let Some(v) = map.get(user) else { return 0 };
        v.iter()
            .filter(|h| self.send_to(&h.tx, frame.clone()))
            .count()
    }

    /// Sends `frame` to one socket's queue; a full queue means the client does not keep up:
    /// it is asked to close (the session task owns the socket). Returns whether it was queued.
    pub fn send_to(&self, tx: &SocketTx, frame: ByteString) -> bool {
        match tx.try_send(Outbound::Text(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.ws_dropped.inc();
                let _ = tx.try_send(Outbound::Close(1013, "too slow"));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Closes every socket of `user` (after erasure).
    pub fn close_user(&self, user: &UserKey, reason: &'static str) {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        for h in map.get(user).into_iter().flatten() {
            let _ = h.tx.try_send(Outbound::Close(1000, reason));
        }
    }

    /// Closes every socket (graceful shutdown): code 1001 "going away".
    pub fn close_all(&self) {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        for h in map.values().flatten() {
            let _ = h.tx.try_send(Outbound::Close(1001, "server shutting down"));
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_reaches_only_that_user() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a1, mut ra1) = mpsc::channel(4);
        let (a2, mut ra2) = mpsc::channel(4);
        let (b, mut rb) = mpsc::channel(4);
        let ua = UserKey([1; 16]);
        let ub = UserKey([2; 16]);
        let id1 = hub.register(ua, a1);
        hub.register(ua, a2);
        hub.register(ub, b);
        assert_eq!(hub.push(&ua, &"x".into()), 2);
        assert!(matches!(ra1.try_recv(), Ok(Outbound::Text(t)) if &*t == "x"));
        assert!(matches!(ra2.try_recv(), Ok(Outbound::Text(_))));
        assert!(rb.try_recv().is_err());
        hub.unregister(&ua, id1);
        assert_eq!(hub.push(&ua, &"y".into()), 1);
        assert_eq!(hub.session_count(), 2);
    }
}
