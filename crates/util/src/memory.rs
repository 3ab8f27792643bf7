//! Giving freed memory back to the operating system. The allocator is the binary's choice
//! (mimalloc, or the system's for heap profilers), so the binary sets how ([`set_release`]) and
//! the engine asks for it ([`release`]) after freeing much at once, on the thread that freed it.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets how to return the calling thread's free pages to the OS (the first call wins).
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Returns the calling thread's free pages to the OS now, if the binary said how; else nothing.
pub fn release() {
    if let Some(f) = RELEASE.get() {
        f()
    }
}
