//! Interned short strings for feature values that repeat across users — the entries of the
//! interaction sequence (`hover:cta`, `scroll:75`, …): every cached user keeps up to
//! `sequence_len` of them, and the same few dozen strings recur across all users, so each user
//! holds 16-byte pointers into one shared copy instead of an allocation per entry.
//!
//! The table is per thread (shard threads never contend for it) and bounded: past
//! [`MAX_ENTRIES`] strings, or for strings longer than [`MAX_LEN`], a value is simply not
//! shared, so a client sending endless new target names cannot grow it without limit.
//! Serialised as a plain string; decoding interns again.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Strings each thread's table holds at most.
pub const MAX_ENTRIES: usize = 4096;
/// Longer strings are not shared.
pub const MAX_LEN: usize = 128;

thread_local! {
    static TABLE: RefCell<HashSet<Arc<str>, foldhash::quality::RandomState>> =
        RefCell::new(HashSet::default());
    /// The empty string, which every default state holds several times (a state lent to the
    /// rules is replaced by a default one for the time of the run): a reference count, no
    /// lookup.
    static EMPTY: Arc<str> = Arc::from("");
}

/// An immutable, cheaply cloned string, shared with equal ones where the table allows.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(Arc<str>);

impl Sym {
    pub fn new(s: &str) -> Sym {
        if s.is_empty() {
            return Sym::default();
        }
        if s.len() > MAX_LEN {
            return Sym(Arc::from(s));
        }
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(a) = t.get(s) {
                return Sym(a.clone());
            }
            let a: Arc<str> = Arc::from(s);
            if t.len() < MAX_ENTRIES {
                t.insert(a.clone());
            }
            Sym(a)
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Equal, ordered and hashed as its text, so maps keyed by `Sym` are looked up by `&str`.
impl std::borrow::Borrow<str> for Sym {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Default for Sym {
    fn default() -> Sym {
        Sym(EMPTY.with(Arc::clone))
    }
}

impl AsRef<str> for Sym {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Sym {
    fn from(s: &str) -> Sym {
        Sym::new(s)
    }
}

impl From<String> for Sym {
    fn from(s: String) -> Sym {
        Sym::new(&s)
    }
}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Sym {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Sym {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sym, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sym;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sym, E> {
                Ok(Sym::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy_and_decode_shared() {
        let a = Sym::new("hover:cta");
        let b = Sym::from(String::from("hover:cta"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(
            bytes,
            postcard::to_allocvec("hover:cta").unwrap(),
            "encoded as a string"
        );
        let c: Sym = postcard::from_bytes(&bytes).unwrap();
        assert!(Arc::ptr_eq(&a.0, &c.0));
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"hover:cta\"");
        assert_eq!(c, "hover:cta");
    }

    #[test]
    fn the_table_is_bounded_and_long_strings_are_not_shared() {
        let long = "x".repeat(MAX_LEN + 1);
        assert!(!Arc::ptr_eq(&Sym::new(&long).0, &Sym::new(&long).0));
        // A thread of its own, so the count starts at zero.
        std::thread::spawn(|| {
            for i in 0..MAX_ENTRIES + 100 {
                Sym::new(&format!("click:t{i}"));
            }
            TABLE.with(|t| assert_eq!(t.borrow().len(), MAX_ENTRIES));
            let late = format!("click:t{}", MAX_ENTRIES + 50);
            let (a, b) = (Sym::new(&late), Sym::new(&late));
            assert!(!Arc::ptr_eq(&a.0, &b.0), "past the bound: not shared");
            assert_eq!(a, b, "but equal");
        })
        .join()
        .unwrap();
    }
}
