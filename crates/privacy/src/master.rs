//! The master key: kept outside the data dir (`TRIMTAB_MASTER_KEY`, or a key file), it wraps
//! every per-user key in `keys.bin` ([`crate::keystore`]), so a copy or backup of the data dir
//! alone can neither read user data nor undo an erasure by restoring an old `keys.bin`.
//!
//! Format: 32 random bytes, written as 64 hexadecimal characters (`trimtab keys generate`).
//! Wrapping is ChaCha20-Poly1305 with a random nonce per slot and the user's pseudonymous key
//! as associated data (a wrapped key cannot be moved to another user's slot unnoticed).

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hmac;

/// Bytes of a wrapped key: nonce ‖ ciphertext ‖ tag.
pub const WRAPPED: usize = 12 + 32 + 16;
/// Bytes of the check value stored in the key file's header.
pub const CHECK: usize = 16;

/// A master key. Its `Debug` shows only its check value, never the key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("the master key must be 64 hexadecimal characters (32 bytes; `trimtab keys generate` makes one), got {0} characters")]
    Length(usize),
    #[error("the master key is not hexadecimal")]
    NotHex,
    #[error("the master key is all zeros")]
    Zero,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(check {})", hex::encode(self.check()))
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> MasterKey {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        MasterKey(k)
    }

    /// Parses 64 hexadecimal characters (surrounding whitespace ignored, as in a key file).
    pub fn parse(text: &str) -> Result<MasterKey, MasterKeyError> {
        let t = text.trim();
        if t.len() != 64 {
            return Err(MasterKeyError::Length(t.chars().count()));
        }
        let mut k = [0u8; 32];
        hex::decode_to_slice(t, &mut k).map_err(|_| MasterKeyError::NotHex)?;
        if k == [0u8; 32] {
            return Err(MasterKeyError::Zero);
        }
        Ok(MasterKey(k))
    }

    /// The key as 64 hexadecimal characters (for `trimtab keys generate`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A value that tells whether a key file was wrapped with this key, without revealing it:
    /// the first 16 bytes of HMAC-SHA256(key, "trimtab keys.bin v2").
    pub fn check(&self) -> [u8; CHECK] {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.0),
            b"trimtab keys.bin v2",
        );
        let mut c = [0u8; CHECK];
        c.copy_from_slice(&tag.as_ref()[..CHECK]);
        c
    }

    fn cipher(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("a 32-byte key"))
    }

    /// Wraps `key` (a user's data key) for `user` (its pseudonymous key, bound as associated
    /// data).
    pub fn wrap(&self, user: &[u8; 16], key: &[u8; 32]) -> [u8; WRAPPED] {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut buf = *key;
        let tag = self
            .cipher()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(user),
                &mut buf,
            )
            .expect("sealing 32 bytes cannot fail");
        let mut out = [0u8; WRAPPED];
        out[..12].copy_from_slice(&nonce);
        out[12..44].copy_from_slice(&buf);
        out[44..].copy_from_slice(tag.as_ref());
        out
    }

    /// Unwraps what [`MasterKey::wrap`] made for `user`; `None` if it was not (another key,
    /// another user, damaged bytes).
    pub fn unwrap(&self, user: &[u8; 16], wrapped: &[u8]) -> Option<[u8; 32]> {
        if wrapped.len() != WRAPPED {
            return None;
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&wrapped[..12]);
        let mut buf = wrapped[12..].to_vec();
        let plain = self
            .cipher()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(user),
                &mut buf,
            )
            .ok()?;
        let mut k = [0u8; 32];
        k.copy_from_slice(plain);
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_what_fails() {
        let m = MasterKey::generate();
        let key = [7u8; 32];
        let w = m.wrap(&[1; 16], &key);
        assert!(!w.windows(32).any(|x| x == key), "the key is visible");
        assert_eq!(m.unwrap(&[1; 16], &w), Some(key));
        assert_eq!(m.unwrap(&[2; 16], &w), None, "another user's slot");
        assert_eq!(
            MasterKey::generate().unwrap(&[1; 16], &w),
            None,
            "another key"
        );
        let mut bad = w;
        bad[20] ^= 1;
        assert_eq!(m.unwrap(&[1; 16], &bad), None);
        // Two wraps of one key differ (random nonces).
        assert_ne!(m.wrap(&[1; 16], &key), w);
    }

    #[test]
    fn parse_and_format() {
        let m = MasterKey::generate();
        let back = MasterKey::parse(&format!("  {}\n", m.to_hex())).expect("parses");
        assert_eq!(back.check(), m.check());
        assert!(matches!(
            MasterKey::parse("abc"),
            Err(MasterKeyError::Length(3))
        ));
        assert!(matches!(
            MasterKey::parse(&"zz".repeat(32)),
            Err(MasterKeyError::NotHex)
        ));
        assert!(matches!(
            MasterKey::parse(&"00".repeat(32)),
            Err(MasterKeyError::Zero)
        ));
        assert!(!format!("{m:?}").contains(&m.to_hex()));
    }
}
