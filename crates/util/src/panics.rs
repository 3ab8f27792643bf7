//! Panics that are expected and caught where they happen (a rule's script, a damaged file a
//! library panics on) versus panics that kill a thread. [`catch`] is `catch_unwind` that says so
//! while it runs: a panic hook (the engine's supervision) can then tell a caught panic from one
//! that will end the thread — at the panic itself, before unwinding drops anything.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`, catching a panic (as `catch_unwind`), marked as expected while it runs.
pub fn catch<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    r
}

/// Whether a panic on this thread now would be caught by [`catch`].
pub fn is_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// The text of a panic payload (`panic!` with a literal or a format), if it has one.
pub fn text(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

/// The message of a panic payload, for logs.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    text(payload).unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_marks_and_unmarks() {
        assert!(!is_caught());
        let r = catch(|| {
            assert!(is_caught());
            catch(|| assert!(is_caught())).unwrap();
            assert!(is_caught());
            panic!("expected");
        });
        let payload = r.unwrap_err();
        assert_eq!(message(payload.as_ref()), "expected");
        assert_eq!(text(&42u8), None);
        assert!(!is_caught());
    }
}
