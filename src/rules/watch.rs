//! Hot reload of the rules directory.
//!
//! Owns: one `notify` watcher on the rules directory (non-recursive) and one thread,
//! `trimtab-rules-watch`, that debounces its events and calls [`Rules::reload`]. Reload
//! compares file hashes, so a burst of events (an editor's temp file + rename, a `put` that the
//! watcher sees afterwards) costs one directory scan and at most one compile per changed file.
//!
//! Threads: notify's own thread only forwards a wake-up over a channel; compiling happens on
//! the watch thread, never on a shard thread. Dropping [`RulesWatcher`] stops both.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

use super::{Rules, RulesError};

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest delay of a reload while events keep coming.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Keeps the rules directory watched; dropping it stops the watcher and joins its thread.
pub struct RulesWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RulesWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesWatcher").finish_non_exhaustive()
    }
}

impl Drop for RulesWatcher {
    fn drop(&mut self) {
        // Stop the event source first, then wake the thread by closing the stop channel.
        drop(self.watcher.take());
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("rules watch thread panicked");
            }
        }
    }
}

/// Whether an event can change what a reload would find.
fn is_relevant(event: &notify::Event) -> bool {
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        // Opening/reading files (our own reloads among them) must not trigger reloads.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    // Only `.rhai` files matter (temp files of `put` and editors end differently; their rename
    // to `x.rhai` is reported with the `.rhai` path). No path at all: be safe, reload.
    event.paths.is_empty()
        || event
            .paths
            .iter()
            .any(|p| p.extension().and_then(|e| e.to_str()) == Some("rhai"))
}

pub(super) fn start(rules: Rules) -> Result<RulesWatcher, RulesError> {
    // One pending wake-up is enough: the reload rescans everything.
    let (wake_tx, wake_rx) = bounded::<()>(1);
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_relevant(&event) => {
                let _ = wake_tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("rules watcher error: {e}");
                let _ = wake_tx.try_send(());
            }
        })
        .map_err(RulesError::Watch)?;
    watcher
        .watch(rules.dir(), RecursiveMode::NonRecursive)
        .map_err(RulesError::Watch)?;
    let thread = std::thread::Builder::new()
        .name("trimtab-rules-watch".to_owned())
        .spawn(move || run(&rules, &wake_rx, &stop_rx))
        .map_err(|source| RulesError::Io {
            path: "trimtab-rules-watch thread".into(),
            source,
        })?;
    Ok(RulesWatcher {
        watcher: Some(watcher),
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn run(rules: &Rules, wake: &Receiver<()>, stop: &Receiver<()>) {
    loop {
        select! {
            recv(stop) -> _ => return,
            recv(wake) -> msg => if msg.is_err() { return },
        }
        // Debounce: wait until the directory has been quiet for DEBOUNCE (at most MAX_DELAY).
        let first = Instant::now();
        loop {
            let remaining = MAX_DELAY.saturating_sub(first.elapsed());
            if remaining.is_zero() {
                break;
            }
            select! {
                recv(stop) -> _ => return,
                recv(wake) -> msg => if msg.is_err() { return },
                default(DEBOUNCE.min(remaining)) => break,
            }
        }
        if let Err(e) = rules.reload() {
            tracing::warn!("rules reload failed: {e}");
        }
    }
}
