//! Hot reload of a directory of definition files (rules `*.rhai`, experiments `*.toml`), or of
//! some named files in a directory (the TLS certificate and key).
//!
//! Owns one `notify` watcher on the directory (non-recursive) and one thread that debounces its
//! events and calls the reload function. notify's own thread only forwards a wake-up over a
//! channel; reloading (parsing, compiling) happens on the watch thread, never on a shard or
//! actix thread. Dropping [`DirWatcher`] stops both.

use std::ffi::OsString;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest delay of a reload while events keep coming.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Keeps a directory watched; dropping it stops the watcher and joins its thread.
pub struct DirWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher").finish_non_exhaustive()
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        // Stop the event source first, then wake the thread by closing the stop channel.
        drop(self.watcher.take());
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("watch thread panicked");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Notify(#[from] notify::Error),
    #[error("cannot start the watch thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Which files of the directory matter.
enum Filter {
    /// Files with this extension.
    Ext(&'static str),
    /// Files with one of these names.
    Names(Vec<OsString>),
}

impl Filter {
    fn matches(&self, p: &Path) -> bool {
        match self {
            Filter::Ext(ext) => p.extension().and_then(|e| e.to_str()) == Some(ext),
            Filter::Names(names) => p.file_name().is_some_and(|n| names.iter().any(|x| x == n)),
        }
    }
}

/// Whether an event can change what a reload would find.
fn is_relevant(event: &notify::Event, filter: &Filter) -> bool {
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        // Opening/reading files (our own reloads among them) must not trigger reloads.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    // Only the files that match (temp files of editors end differently; their rename to
    // `x.ext` is reported with the final path). No path at all: be safe, reload.
    event.paths.is_empty() || event.paths.iter().any(|p| filter.matches(p))
}

impl DirWatcher {
    /// Watches `dir` for changes of `*.ext` files and calls `reload` (debounced) on its own
    /// thread named `name`.
    pub fn start(
        name: &str,
        dir: &Path,
        ext: &'static str,
        reload: impl Fn() + Send + 'static,
    ) -> Result<DirWatcher, WatchError> {
        DirWatcher::watch(name, dir, Filter::Ext(ext), reload)
    }

    /// Watches `dir` for changes of the files named `names` (their renames included) and
    /// calls `reload` (debounced) on its own thread.
    pub fn start_for_files(
        name: &str,
        dir: &Path,
        names: Vec<OsString>,
        reload: impl Fn() + Send + 'static,
    ) -> Result<DirWatcher, WatchError> {
        DirWatcher::watch(name, dir, Filter::Names(names), reload)
    }

    fn watch(
        name: &str,
        dir: &Path,
        filter: Filter,
        reload: impl Fn() + Send + 'static,
    ) -> Result<DirWatcher, WatchError> {
        // One pending wake-up is enough: a reload rescans everything.
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let label = name.to_string();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(event) if is_relevant(&event, &filter) => {
                    let _ = wake_tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("{label} watcher error: {e}");
                    let _ = wake_tx.try_send(());
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(&reload, &wake_rx, &stop_rx))?;
        Ok(DirWatcher {
            watcher: Some(watcher),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

fn run(reload: &dyn Fn(), wake: &Receiver<()>, stop: &Receiver<()>) {
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
        reload();
    }
}
