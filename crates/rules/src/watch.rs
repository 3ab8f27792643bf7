//! Hot reload of the rules directory: the definition registry's watcher on `*.rhai` files.
//! A reload compares file hashes, so a burst of events (an editor's temp file + rename, a `put`
//! that the watcher sees afterwards) costs one directory scan and at most one compile per
//! changed file.

use std::sync::Arc;

use super::{RuleKind, RulesError};
use trimtab_util::registry::Registry;
use trimtab_util::watch::DirWatcher;

/// Keeps the rules directory watched; dropping it stops the watcher and joins its thread.
pub type RulesWatcher = DirWatcher;

pub(super) fn start(rules: &Arc<Registry<RuleKind>>) -> Result<RulesWatcher, RulesError> {
    rules.watch("trimtab-rules-watch").map_err(|e| match e {
        trimtab_util::watch::WatchError::Notify(n) => RulesError::Watch(n),
        trimtab_util::watch::WatchError::Thread(source) => RulesError::Io {
            path: "trimtab-rules-watch thread".into(),
            source,
        },
    })
}
