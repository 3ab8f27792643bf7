//! Record encryption with per-user keys: ChaCha20-Poly1305, a random 96-bit nonce per record,
//! and the user key plus the table name as associated data (a record cannot be moved to another
//! user or table unnoticed). Once a user's key is destroyed, their records are noise.
//!
//! [`Sealer`] holds one user's ready cipher: a shard builds it once per cached user and seals
//! every record of that user with it (one allocation per record, no per-record key setup).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use rand::RngCore;

use super::ids::UserKey;

/// Nonce length in front of every sealed record.
const NONCE: usize = 12;
/// Authentication tag length at the end of every sealed record.
const TAG: usize = 16;
/// Bytes a sealed record adds to its plaintext.
pub const OVERHEAD: usize = NONCE + TAG;

/// Which table a record belongs to (bound into the AEAD associated data).
#[derive(Clone, Copy, Debug)]
pub enum Table {
    State,
    Event,
    Decision,
    Learn,
    Journal,
}

impl Table {
    fn tag(self) -> &'static [u8] {
        match self {
            Table::State => b"state",
            Table::Event => b"event",
            Table::Decision => b"decision",
            Table::Learn => b"learn",
            Table::Journal => b"journal",
        }
    }
}

/// `user ‖ table tag`, on the stack (the longest tag is 8 bytes).
fn aad(user: &UserKey, table: Table) -> ([u8; 24], usize) {
    let mut a = [0u8; 24];
    a[..16].copy_from_slice(&user.0);
    let t = table.tag();
    a[16..16 + t.len()].copy_from_slice(t);
    (a, 16 + t.len())
}

/// One user's cipher, ready to seal and open that user's records.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Encrypts `plain` for `user`: returns nonce ‖ ciphertext ‖ tag, in one allocation.
    pub fn seal(&self, user: &UserKey, table: Table, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (a, n) = aad(user, table);
        // Encryption only fails for plaintexts beyond ~256 GiB; records are bounded far below.
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &a[..n], &mut out[NONCE..])
            .expect("record far below the AEAD size limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts a record sealed by [`Sealer::seal`]; `None` when it is not authentic.
    pub fn open(&self, user: &UserKey, table: Table, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE);
        let (ct, tag) = rest.split_at(rest.len() - TAG);
        let mut plain = ct.to_vec();
        let (a, n) = aad(user, table);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &a[..n],
                &mut plain,
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(plain)
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }") // never print key material
    }
}

/// Encrypts `plain` for `user` with `key` (see [`Sealer::seal`]).
pub fn seal_record(key: &[u8; 32], user: &UserKey, table: Table, plain: &[u8]) -> Vec<u8> {
    Sealer::new(key).seal(user, table, plain)
}

/// Decrypts a record sealed for `user` with `key`; `None` when it is not authentic.
pub fn open_record(key: &[u8; 32], user: &UserKey, table: Table, sealed: &[u8]) -> Option<Vec<u8>> {
    Sealer::new(key).open(user, table, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let k = [3u8; 32];
        let u = UserKey([1; 16]);
        let sealed = seal_record(&k, &u, Table::Event, b"canary-123");
        assert_eq!(sealed.len(), 10 + OVERHEAD);
        assert!(!sealed.windows(10).any(|w| w == b"canary-123"));
        assert_eq!(
            open_record(&k, &u, Table::Event, &sealed).unwrap(),
            b"canary-123"
        );
        assert!(open_record(&k, &u, Table::State, &sealed).is_none());
        assert!(open_record(&k, &u, Table::Journal, &sealed).is_none());
        assert!(open_record(&k, &UserKey([2; 16]), Table::Event, &sealed).is_none());
        assert!(open_record(&[4u8; 32], &u, Table::Event, &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[14] ^= 1;
        assert!(open_record(&k, &u, Table::Event, &flipped).is_none());
        assert!(open_record(&k, &u, Table::Event, &sealed[..20]).is_none());
    }

    #[test]
    fn one_sealer_many_records_distinct_nonces() {
        let s = Sealer::new(&[9u8; 32]);
        let u = UserKey([7; 16]);
        let a = s.seal(&u, Table::Decision, b"same");
        let b = s.seal(&u, Table::Decision, b"same");
        assert_ne!(a, b, "a nonce was reused");
        assert_eq!(s.open(&u, Table::Decision, &a).unwrap(), b"same");
        assert_eq!(s.open(&u, Table::Decision, &b).unwrap(), b"same");
        assert_eq!(
            s.open(&u, Table::Decision, &s.seal(&u, Table::Decision, b""))
                .unwrap(),
            b""
        );
    }
}
