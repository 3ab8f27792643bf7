//! Pseudonymous user ids. A raw user id is turned into a [`UserKey`] (16 bytes of an HMAC-SHA256
//! under the instance's pseudonym key) at the API edge; only that key is ever stored, so the
//! data dir never contains a raw id. Event ids are hashed the same way for deduplication.
//!
//! Nor does the data dir key anything by that [`UserKey`] outside `keys.bin`: rows and records
//! are filed under the user's [`RowId`], derived from the user's random data key. After an
//! erasure zeroes the key's slot, what redb's free pages and the logs still hold under the old
//! row id can no longer be tied to the user, even by someone holding the pseudonym key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The pseudonymous identity of a user: stored, logged and routed on; never reversed.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Debug,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct UserKey(pub [u8; 16]);

impl UserKey {
    /// Lowercase hex of the first 8 bytes: short enough for logs and scripts, still unique in
    /// practice for display (routing always uses all 16 bytes).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Which of `n` shards owns this user.
    pub fn shard(&self, n: usize) -> usize {
        let x = u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ]);
        (x % n.max(1) as u64) as usize
    }
}

/// Where a user's rows are filed in the data dir: 16 bytes of an HMAC-SHA256 keyed with the
/// user's random data key, so as random as that key and known only while it exists (the key
/// store maps a user key to it; nothing else does). A user erased and seen again gets a new key
/// and so a new row id.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Debug,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct RowId(pub [u8; 16]);

impl RowId {
    /// The row id of the user whose data key is `key`.
    pub fn of(key: &[u8; 32]) -> RowId {
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(b"trimtab/row/v1");
        let out = m.finalize().into_bytes();
        let mut r = [0u8; 16];
        r.copy_from_slice(&out[..16]);
        RowId(r)
    }
}

/// Keyed hashing of user ids and event ids.
#[derive(Clone)]
pub struct Pseudonymizer {
    /// The HMAC with the key already absorbed (its inner and outer pads hashed once, here):
    /// each id then costs two SHA-256 blocks instead of four.
    keyed: HmacSha256,
}

impl Pseudonymizer {
    pub fn new(key: [u8; 32]) -> Self {
        Pseudonymizer {
            // new_from_slice accepts any key length for HMAC, so this cannot fail.
            keyed: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        let mut m = self.keyed.clone();
        m.update(domain);
        for p in parts {
            m.update(&(p.len() as u64).to_le_bytes());
            m.update(p);
        }
        let out = m.finalize().into_bytes();
        let mut k = [0u8; 16];
        k.copy_from_slice(&out[..16]);
        k
    }

    pub fn user(&self, raw_id: &str) -> UserKey {
        UserKey(self.mac(b"trimtab/user/v1", &[raw_id.as_bytes()]))
    }

    /// Deduplication key of an event id, scoped to its user.
    pub fn event_id(&self, user: &UserKey, event_id: &str) -> [u8; 16] {
        self.mac(b"trimtab/event/v1", &[&user.0, event_id.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_stable() {
        let a = Pseudonymizer::new([1; 32]);
        let b = Pseudonymizer::new([2; 32]);
        assert_eq!(a.user("alice"), a.user("alice"));
        assert_ne!(a.user("alice"), a.user("bob"));
        assert_ne!(a.user("alice"), b.user("alice"));
        let u = a.user("alice");
        assert_ne!(a.event_id(&u, "e1"), a.event_id(&a.user("bob"), "e1"));
        assert!(!u.hex().contains("alice"));
        assert_eq!(u.short().len(), 16);
    }

    #[test]
    fn row_ids_follow_the_data_key_not_the_user() {
        assert_eq!(RowId::of(&[7; 32]), RowId::of(&[7; 32]));
        assert_ne!(RowId::of(&[7; 32]), RowId::of(&[8; 32]));
        assert_ne!(RowId::of(&[7; 32]).0, [7; 16]);
    }
}
