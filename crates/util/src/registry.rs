//! One registry for every kind of definition file kept in a directory — trigger rules
//! (`*.rhai`), experiments and bandit slots (`*.toml`). It reads the directory, compiles each
//! file through its kind's own [`Kind::compile`], keeps the last good version of a file that
//! stops compiling running (with the error visible in its [`Entry`]), installs uploads
//! ([`Registry::put`]: compile first, nothing written on error; then an atomic write and the
//! new version live at once, without waiting for the watcher) and deletions, and reloads on
//! changes ([`Registry::watch`]). Written once; a kind supplies only what differs.
//!
//! The live set is replaced as a whole: readers (the shards' hot path) take a snapshot without
//! locking. Writers (reload, put, delete) are serialised by one lock, so two writers never lose
//! each other's change. Reloads run on the watch thread, puts and deletes on the caller's (the
//! API's blocking pool). A reload leaves a file whose content did not change (same SHA-256)
//! alone, so a burst of file events costs one scan and at most one compile per changed file.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::watch::{DirWatcher, WatchError};

/// One kind of definition file.
pub trait Kind: Send + Sync + Sized + 'static {
    /// The live, compiled form of one file.
    type Item: Send + Sync + 'static;
    /// Why a file's text was refused (its shape in API answers is the kind's own).
    type Error: Clone + Send + Sync + std::fmt::Debug + 'static;
    /// What one file is called in the log: `rule`, `experiment`, `bandit`.
    const NOUN: &'static str;
    /// The files' extension, without the dot.
    const EXT: &'static str;
    /// Files larger than this are not read: a warning in the log, and what runs stays.
    const MAX_BYTES: u64 = 1 << 20;

    /// Whether `name` (a file stem) may name a definition: `Err(reason)` if not. Files with
    /// other names are skipped with a warning; `put` and `delete` refuse them.
    fn check_name(&self, name: &str) -> Result<(), &'static str>;

    /// Compiles one file's text. `file` is the path shown in errors; `prev` is the version
    /// that runs under this name now, if any (a kind may carry state over, e.g. counters).
    fn compile(
        &self,
        name: &str,
        file: &str,
        text: &str,
        prev: Option<&Arc<Self::Item>>,
    ) -> Result<Self::Item, Self::Error>;

    /// The error's message, for the log line of a refused file.
    fn describe(error: &Self::Error) -> String;

    /// Called with the new set after every change (reload, put, delete), while the writer
    /// lock is held: a kind that derives something from its set rebuilds it here.
    fn installed(&self, _set: &Set<Self>) {}
}

/// One definition file as the registry knows it.
pub struct Entry<K: Kind> {
    /// The file stem.
    pub name: String,
    /// The path shown in errors and listings.
    pub file: String,
    /// The version that runs: the last one that compiled (None if none ever did).
    pub live: Option<Arc<K::Item>>,
    /// Why the file as it is now does not compile, if it does not.
    pub error: Option<K::Error>,
    /// SHA-256 (hex) of the content last read.
    pub sha256: String,
    /// When that content was read, Unix ms.
    pub read_at_ms: i64,
}

/// The registry's set, by name (so iteration is in name order).
pub type Set<K> = BTreeMap<String, Arc<Entry<K>>>;

/// Why a `put` did not install anything.
#[derive(Debug)]
pub enum PutError<E> {
    /// The name may not name a definition.
    InvalidName { name: String, reason: &'static str },
    /// The text does not compile; nothing was written.
    Invalid(E),
    /// The file could not be written.
    Io { path: PathBuf, source: io::Error },
}

/// A directory of definition files of one kind and their live versions.
pub struct Registry<K: Kind> {
    kind: K,
    dir: PathBuf,
    set: ArcSwap<Set<K>>,
    writer: Mutex<()>,
}

/// SHA-256 of a text, hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Kind> Registry<K> {
    /// Opens the registry of `dir` (created if missing) and compiles every file in it. A file
    /// that does not compile is recorded with its error; loading fails only if the directory
    /// cannot be created or read.
    pub fn open(kind: K, dir: &Path) -> io::Result<Registry<K>> {
        std::fs::create_dir_all(dir)?;
        let r = Registry {
            kind,
            dir: dir.to_path_buf(),
            set: ArcSwap::from_pointee(Set::new()),
            writer: Mutex::new(()),
        };
        r.reload()?;
        Ok(r)
    }

    pub fn kind(&self) -> &K {
        &self.kind
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the file of `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{}", K::EXT))
    }

    fn file_of(&self, name: &str) -> String {
        self.path_of(name).display().to_string()
    }

    /// A snapshot of the set (no lock; cheap).
    pub fn set(&self) -> Arc<Set<K>> {
        self.set.load_full()
    }

    /// A reference to the current set for a short read on the hot path.
    pub fn guard(&self) -> arc_swap::Guard<Arc<Set<K>>> {
        self.set.load()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Entry<K>>> {
        self.set.load().get(name).cloned()
    }

    /// The live items, in name order.
    pub fn live(&self) -> Vec<Arc<K::Item>> {
        self.set
            .load()
            .values()
            .filter_map(|e| e.live.clone())
            .collect()
    }

    /// The files that do not compile: (entry, error).
    pub fn problems(&self) -> Vec<(Arc<Entry<K>>, K::Error)> {
        self.set
            .load()
            .values()
            .filter_map(|e| e.error.clone().map(|err| (e.clone(), err)))
            .collect()
    }

    fn install(&self, set: Set<K>) {
        self.kind.installed(&set);
        self.set.store(Arc::new(set));
    }

    fn entry(&self, name: &str, text: &str, sha: String, prev: Option<&Arc<Entry<K>>>) -> Entry<K> {
        let file = self.file_of(name);
        let now = crate::now_ms();
        let running = prev.and_then(|p| p.live.as_ref());
        match self.kind.compile(name, &file, text, running) {
            Ok(item) => {
                tracing::info!(kind = K::NOUN, name, sha256 = %sha, "definition loaded");
                Entry {
                    name: name.to_owned(),
                    file,
                    live: Some(Arc::new(item)),
                    error: None,
                    sha256: sha,
                    read_at_ms: now,
                }
            }
            Err(error) => {
                tracing::warn!(
                    kind = K::NOUN,
                    name,
                    file = %file,
                    previous_version_kept = running.is_some(),
                    "definition refused: {}",
                    K::describe(&error)
                );
                Entry {
                    name: name.to_owned(),
                    file,
                    live: running.cloned(),
                    error: Some(error),
                    sha256: sha,
                    read_at_ms: now,
                }
            }
        }
    }

    /// Re-reads the directory and applies every difference: new files are compiled, changed
    /// files recompiled, removed files dropped; unchanged files keep their entry. A file that
    /// cannot be read (vanished mid-rename, too large) keeps what runs now.
    pub fn reload(&self) -> io::Result<()> {
        let _w = lock(&self.writer);
        let current = self.set.load_full();
        let mut next = Set::new();
        for item in std::fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(K::EXT) || !path.is_file() {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                tracing::warn!(kind = K::NOUN, file = %path.display(), "skipping a file with a non-UTF-8 name");
                continue;
            };
            if let Err(reason) = self.kind.check_name(name) {
                tracing::warn!(kind = K::NOUN, file = %path.display(), "skipping a file whose name is not a valid name: {reason}");
                continue;
            }
            let prev = current.get(name);
            match read(&path, K::MAX_BYTES) {
                Ok(text) => {
                    let sha = sha256_hex(&text);
                    let e = match prev {
                        Some(p) if p.sha256 == sha => p.clone(),
                        _ => Arc::new(self.entry(name, &text, sha, prev)),
                    };
                    next.insert(name.to_owned(), e);
                }
                Err(e) => {
                    tracing::warn!(kind = K::NOUN, file = %path.display(), "cannot read the file: {e}");
                    if let Some(p) = prev {
                        next.insert(name.to_owned(), p.clone());
                    }
                }
            }
        }
        for name in current.keys().filter(|n| !next.contains_key(*n)) {
            tracing::info!(kind = K::NOUN, name = %name, "definition removed");
        }
        self.install(next);
        Ok(())
    }

    /// Validates `text` by compiling it, then writes `dir/NAME.EXT` atomically (temp file,
    /// fsync, rename) and installs it at once. On a compile error nothing is written and what
    /// runs stays.
    pub fn put(&self, name: &str, text: &str) -> Result<Arc<Entry<K>>, PutError<K::Error>> {
        if let Err(reason) = self.kind.check_name(name) {
            return Err(PutError::InvalidName {
                name: name.to_owned(),
                reason,
            });
        }
        let _w = lock(&self.writer);
        let current = self.set.load_full();
        let prev = current.get(name);
        let file = self.file_of(name);
        let item = self
            .kind
            .compile(name, &file, text, prev.and_then(|p| p.live.as_ref()))
            .map_err(PutError::Invalid)?;
        let path = self.path_of(name);
        crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| PutError::Io {
            path: path.clone(),
            source,
        })?;
        // The file is in place; a failure to make the rename durable only weakens durability.
        let _ = crate::fsutil::sync_dir(&path);
        let entry = Arc::new(Entry {
            name: name.to_owned(),
            file,
            live: Some(Arc::new(item)),
            error: None,
            sha256: sha256_hex(text),
            read_at_ms: crate::now_ms(),
        });
        let mut next = (*current).clone();
        next.insert(name.to_owned(), entry.clone());
        self.install(next);
        tracing::info!(kind = K::NOUN, name, "definition uploaded");
        Ok(entry)
    }

    /// Removes `dir/NAME.EXT` and its entry. Returns whether there was anything to remove.
    pub fn delete(&self, name: &str) -> Result<bool, PutError<K::Error>> {
        if let Err(reason) = self.kind.check_name(name) {
            return Err(PutError::InvalidName {
                name: name.to_owned(),
                reason,
            });
        }
        let _w = lock(&self.writer);
        let path = self.path_of(name);
        let had_file = match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = crate::fsutil::sync_dir(&path);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => return Err(PutError::Io { path, source }),
        };
        let current = self.set.load_full();
        let had_entry = current.contains_key(name);
        if had_entry {
            let mut next = (*current).clone();
            next.remove(name);
            self.install(next);
        }
        if had_file || had_entry {
            tracing::info!(kind = K::NOUN, name, "definition deleted");
        }
        Ok(had_file || had_entry)
    }
}

impl<K: Kind> Registry<K> {
    /// Watches the directory and reloads on changes (debounced; editors that save through a
    /// temp file and a rename included). Dropping the guard stops watching.
    pub fn watch(self: &Arc<Self>, thread: &str) -> Result<DirWatcher, WatchError> {
        let me = Arc::clone(self);
        DirWatcher::start(thread, &self.dir, K::EXT, move || {
            if let Err(e) = me.reload() {
                tracing::warn!(kind = K::NOUN, "reload failed: {e}");
            }
        })
    }
}

fn read(path: &Path, max: u64) -> io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Numbers: a file holds one integer; a negative one is refused. Each version counts
    /// how many versions of its name came before it (state carried over through `prev`).
    #[derive(Default)]
    struct Numbers {
        installs: AtomicUsize,
        compiles: AtomicUsize,
    }
    struct Num {
        value: i64,
        generation: usize,
    }
    impl Kind for Numbers {
        type Item = Num;
        type Error = String;
        const NOUN: &'static str = "number";
        const EXT: &'static str = "num";
        const MAX_BYTES: u64 = 64;
        fn check_name(&self, name: &str) -> Result<(), &'static str> {
            if name.chars().all(|c| c.is_ascii_lowercase()) && !name.is_empty() {
                Ok(())
            } else {
                Err("lowercase letters only")
            }
        }
        fn compile(
            &self,
            _: &str,
            file: &str,
            text: &str,
            prev: Option<&Arc<Num>>,
        ) -> Result<Num, String> {
            self.compiles.fetch_add(1, Ordering::Relaxed);
            let value: i64 = text.trim().parse().map_err(|e| format!("{file}: {e}"))?;
            if value < 0 {
                return Err(format!("{file}: negative"));
            }
            Ok(Num {
                value,
                generation: prev.map_or(0, |p| p.generation + 1),
            })
        }
        fn describe(e: &String) -> String {
            e.clone()
        }
        fn installed(&self, _: &Set<Self>) {
            self.installs.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn value(r: &Registry<Numbers>, n: &str) -> Option<i64> {
        r.get(n).and_then(|e| e.live.as_ref().map(|i| i.value))
    }

    #[test]
    fn reload_keeps_the_last_good_version_and_shows_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.num"), "1").unwrap();
        std::fs::write(dir.path().join("b.num"), "x").unwrap();
        std::fs::write(dir.path().join("Bad.num"), "3").unwrap(); // invalid name: skipped
        std::fs::write(dir.path().join("c.txt"), "4").unwrap(); // other extension
        let r = Registry::open(Numbers::default(), dir.path()).unwrap();
        assert_eq!(r.set().keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(value(&r, "a"), Some(1));
        assert_eq!(value(&r, "b"), None, "never compiled: nothing runs");
        assert!(r
            .get("b")
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .contains("b.num"));
        // a breaks: version 1 keeps running, the error is visible; b is fixed.
        std::fs::write(dir.path().join("a.num"), "-5").unwrap();
        std::fs::write(dir.path().join("b.num"), "2").unwrap();
        r.reload().unwrap();
        let a = r.get("a").unwrap();
        assert_eq!(a.live.as_ref().unwrap().value, 1);
        assert_eq!(
            a.error.as_deref(),
            Some(&*format!("{}: negative", r.file_of("a")))
        );
        assert_eq!(value(&r, "b"), Some(2));
        assert_eq!(r.problems().len(), 1);
        // a is fixed: the new version carries the old one's state.
        std::fs::write(dir.path().join("a.num"), "7").unwrap();
        r.reload().unwrap();
        let a = r.get("a").unwrap();
        assert_eq!(
            (
                a.live.as_ref().unwrap().value,
                a.live.as_ref().unwrap().generation
            ),
            (7, 1)
        );
        assert!(a.error.is_none());
        // Unchanged files are not compiled again; a removed file goes.
        let before = r.kind().compiles.load(Ordering::Relaxed);
        std::fs::remove_file(dir.path().join("b.num")).unwrap();
        r.reload().unwrap();
        assert_eq!(r.kind().compiles.load(Ordering::Relaxed), before);
        assert_eq!(r.set().keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn put_validates_before_writing_and_installs_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(Numbers::default(), dir.path()).unwrap();
        let installs = r.kind().installs.load(Ordering::Relaxed);
        let e = r.put("a", "3").unwrap();
        assert_eq!(e.live.as_ref().unwrap().value, 3);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.num")).unwrap(),
            "3"
        );
        assert_eq!(value(&r, "a"), Some(3), "live without a reload");
        assert_eq!(r.kind().installs.load(Ordering::Relaxed), installs + 1);
        // A refused upload writes nothing and changes nothing.
        assert!(matches!(r.put("a", "-1"), Err(PutError::Invalid(m)) if m.contains("negative")));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.num")).unwrap(),
            "3"
        );
        assert_eq!(value(&r, "a"), Some(3));
        assert!(matches!(
            r.put("A/../x", "1"),
            Err(PutError::InvalidName {
                reason: "lowercase letters only",
                ..
            })
        ));
        // Too large to read back: the reload keeps what runs.
        std::fs::write(dir.path().join("a.num"), "9".repeat(100)).unwrap();
        r.reload().unwrap();
        assert_eq!(value(&r, "a"), Some(3));
        // Delete: the file and the entry go; a second delete finds nothing.
        assert!(r.delete("a").unwrap());
        assert!(!dir.path().join("a.num").exists());
        assert!(r.get("a").is_none());
        assert!(!r.delete("a").unwrap());
    }
}
