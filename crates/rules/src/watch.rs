//! Hot reload of the rules directory: a [`trimtab_util::watch::DirWatcher`] on `*.rhai` files whose
//! reload is [`Rules::reload`]. Reload compares file hashes, so a burst of events (an editor's
//! temp file + rename, a `put` that the watcher sees afterwards) costs one directory scan and at
//! most one compile per changed file.

use super::{Rules, RulesError};
use trimtab_util::watch::DirWatcher;

/// Keeps the rules directory watched; dropping it stops the watcher and joins its thread.
pub type RulesWatcher = DirWatcher;

pub(super) fn start(rules: Rules) -> Result<RulesWatcher, RulesError> {
    let dir = rules.dir().to_path_buf();
    DirWatcher::start("trimtab-rules-watch", &dir, "rhai", move || {
        if let Err(e) = rules.reload() {
            tracing::warn!("rules reload failed: {e}");
        }
    })
    .map_err(|e| match e {
        trimtab_util::watch::WatchError::Notify(n) => RulesError::Watch(n),
        trimtab_util::watch::WatchError::Thread(source) => RulesError::Io {
            path: "trimtab-rules-watch thread".into(),
            source,
        },
    })
}
