//! Small file-system helpers shared by the definition registry (rules, experiments, bandits),
//! the model registry and the data dir: atomic replacement of a file, making a rename durable,
//! and files and directories private to the server's user from their first byte (secrets,
//! keys, the database).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` via a uniquely named temp file beside it, fsync and rename, so
/// readers (and directory watchers) only ever see the old or the new content. The temp file is
/// removed on failure. Call [`sync_dir`] afterwards to make the rename itself durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, fs::OpenOptions::new())
}

/// [`write_atomic`] for a private file: mode 0600 from its creation, never readable by others
/// even for a moment.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, private_options())
}

/// Options that create a file with mode 0600 (on Unix; elsewhere the platform's default).
pub fn private_options() -> fs::OpenOptions {
    #[allow(unused_mut)]
    let mut o = fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Creates `path` (and missing parents) with mode 0700 when it does not exist; an existing
/// directory is left as its owner set it.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path)
}

/// Creates an empty file with mode 0600 unless `path` exists (for files that a library then
/// opens and fills, such as the database).
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    match private_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    mut options: fs::OpenOptions,
) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = options.write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs the directory holding `path` (makes a rename in it durable).
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(parent(path))?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_files_and_dirs_are_private_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let data = dir.path().join("a/b");
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        create_private_dir(&data).unwrap();
        let f = data.join("db");
        create_private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        fs::write(&f, b"kept").unwrap();
        create_private_file(&f).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"kept");
        let s = data.join("secrets");
        write_atomic_private(&s, b"x").unwrap();
        assert_eq!(mode(&s), 0o600);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        sync_dir(&p).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        fs::write(dir.path().join("b.rhai"), "x").unwrap();
        // Writing into a missing directory fails and leaves nothing behind.
        assert!(write_atomic(&dir.path().join("missing/c.toml"), b"x").is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
