//! User tokens: `tt1.` + base64url(user key ‖ expiry ‖ HMAC-SHA256). A token is bound to one
//! pseudonymous user, expires, and is verified in constant time (`Mac::verify_slice`). Tokens
//! carry no raw id, and the signing key never leaves this module (it has no `Debug`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ids::UserKey;

type HmacSha256 = Hmac<Sha256>;
const PREFIX: &str = "tt1.";
const PAYLOAD: usize = 16 + 8;
const TAG: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

/// Issues and verifies user tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl TokenSigner {
    pub fn new(key: [u8; 32]) -> Self {
        TokenSigner { key }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"trimtab/token/v1");
        m
    }

    /// A token for `user` valid until `expires_s` (Unix seconds).
    pub fn issue(&self, user: &UserKey, expires_s: u64) -> String {
        let mut buf = Vec::with_capacity(PAYLOAD + TAG);
        buf.extend_from_slice(&user.0);
        buf.extend_from_slice(&expires_s.to_be_bytes());
        let mut m = self.mac();
        m.update(&buf);
        buf.extend_from_slice(&m.finalize().into_bytes());
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(buf))
    }

    /// The user a token is bound to, if it is authentic and not expired at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<UserKey, TokenError> {
        let (user, exp) = self.verify_signature(token)?;
        if exp <= now_s {
            return Err(TokenError::Expired);
        }
        Ok(user)
    }

    /// The user and expiry of an authentic token, expired or not (for renewal).
    pub fn verify_signature(&self, token: &str) -> Result<(UserKey, u64), TokenError> {
        let body = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if body.len() > 128 {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != PAYLOAD + TAG {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = raw.split_at(PAYLOAD);
        let mut m = self.mac();
        m.update(payload);
        m.verify_slice(tag).map_err(|_| TokenError::BadSignature)?;
        let mut user = [0u8; 16];
        user.copy_from_slice(&payload[..16]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&payload[16..]);
        Ok((UserKey(user), u64::from_be_bytes(exp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_forge_expire() {
        let s = TokenSigner::new([7; 32]);
        let u = UserKey([9; 16]);
        let t = s.issue(&u, 1_000);
        assert_eq!(s.verify(&t, 999), Ok(u));
        assert_eq!(s.verify(&t, 1_000), Err(TokenError::Expired));
        assert_eq!(s.verify_signature(&t), Ok((u, 1_000)));
        // Another key's token is refused.
        let other = TokenSigner::new([8; 32]).issue(&u, 1_000);
        assert_eq!(s.verify(&other, 1), Err(TokenError::BadSignature));
        // Flipping a payload byte (another user) breaks the signature.
        let mut raw = URL_SAFE_NO_PAD.decode(&t[4..]).unwrap();
        raw[0] ^= 1;
        let forged = format!("tt1.{}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(s.verify(&forged, 1), Err(TokenError::BadSignature));
        assert_eq!(s.verify("nonsense", 1), Err(TokenError::Malformed));
        assert_eq!(s.verify("tt1.!!!", 1), Err(TokenError::Malformed));
    }
}
