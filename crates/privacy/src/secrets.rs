//! The instance's secrets: admin token, write key, token-signing key and pseudonym key.
//!
//! Kept in `secrets.toml` (mode 0600) in the data dir, generated on first start. The admin token
//! and write key can instead come from config/env (`TRIMTAB_ADMIN_TOKEN`, `TRIMTAB_WRITE_KEY`),
//! in which case they are not stored. `Debug` is implemented by hand so secrets never reach a log.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::keystore::set_private;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    admin_token: String,
    write_key: String,
    token_key: String,
    pseudonym_key: String,
}

#[derive(Clone)]
pub struct Secrets {
    pub admin_token: String,
    pub write_key: String,
    pub token_key: [u8; 32],
    pub pseudonym_key: [u8; 32],
    /// Secrets that were generated on this start (to be shown once to the operator).
    pub generated: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid secrets file: {message}")]
    Invalid { path: String, message: String },
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

fn random_key() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn decode_key(path: &str, name: &str, s: &str) -> Result<[u8; 32], SecretsError> {
    let v = hex::decode(s)
        .ok()
        .filter(|v| v.len() == 32)
        .ok_or_else(|| SecretsError::Invalid {
            path: path.to_string(),
            message: format!("{name} must be 64 hex characters"),
        })?;
    let mut k = [0u8; 32];
    k.copy_from_slice(&v);
    Ok(k)
}

impl Secrets {
    /// Loads `data_dir/secrets.toml`, creating it on first start. `admin_token`/`write_key`
    /// given by config override the stored ones.
    pub fn load_or_create(
        data_dir: &Path,
        admin_token: Option<&str>,
        write_key: Option<&str>,
    ) -> Result<Secrets, SecretsError> {
        let path = data_dir.join("secrets.toml");
        let p = path.display().to_string();
        let io = |source| SecretsError::Io {
            path: p.clone(),
            source,
        };
        let mut generated = Vec::new();
        let file: SecretsFile = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            toml::from_str(&text).map_err(|e| SecretsError::Invalid {
                path: p.clone(),
                message: e.message().to_string(),
            })?
        } else {
            let f = SecretsFile {
                admin_token: random_token("tta_"),
                write_key: random_token("ttw_"),
                token_key: random_key(),
                pseudonym_key: random_key(),
            };
            if admin_token.is_none() {
                generated.push(("an admin token", f.admin_token.clone()));
            }
            if write_key.is_none() {
                generated.push(("a write key", f.write_key.clone()));
            }
            let text = toml::to_string(&f).map_err(|e| SecretsError::Invalid {
                path: p.clone(),
                message: e.to_string(),
            })?;
            // Mode 0600 from the first byte, fsynced, then renamed into place.
            trimtab_util::fsutil::write_atomic_private(&path, text.as_bytes()).map_err(io)?;
            f
        };
        set_private(&path);
        let secrets = Secrets {
            admin_token: admin_token.map(str::to_string).unwrap_or(file.admin_token),
            write_key: write_key.map(str::to_string).unwrap_or(file.write_key),
            token_key: decode_key(&p, "token_key", &file.token_key)?,
            pseudonym_key: decode_key(&p, "pseudonym_key", &file.pseudonym_key)?,
            generated,
        };
        secrets.check_credentials(&p)?;
        Ok(secrets)
    }
}

impl Secrets {
    /// The token-signing and pseudonym keys from configuration (64 hex characters each)
    /// instead of the stored ones: the nodes of a cluster share them.
    pub fn with_keys(
        mut self,
        token_key: Option<&str>,
        pseudonym_key: Option<&str>,
    ) -> Result<Secrets, SecretsError> {
        if let Some(k) = token_key {
            self.token_key = decode_key("the configuration", "token_key", k)?;
        }
        if let Some(k) = pseudonym_key {
            self.pseudonym_key = decode_key("the configuration", "pseudonym_key", k)?;
        }
        Ok(self)
    }
}

/// Shortest admin token or write key accepted, from any source.
pub const MIN_CREDENTIAL_LEN: usize = 16;

impl Secrets {
    /// The credentials in force, wherever they came from (configuration, environment or a
    /// hand-edited secrets file): each at least [`MIN_CREDENTIAL_LEN`] characters, and not the
    /// same (the write key ships in pages; it must not open the admin API).
    fn check_credentials(&self, path: &str) -> Result<(), SecretsError> {
        let bad = |message: String| {
            Err(SecretsError::Invalid {
                path: path.to_string(),
                message,
            })
        };
        for (name, v) in [
            ("admin_token", &self.admin_token),
            ("write_key", &self.write_key),
        ] {
            if v.chars().count() < MIN_CREDENTIAL_LEN {
                return bad(format!(
                    "{name} is shorter than {MIN_CREDENTIAL_LEN} characters (set a longer one, or \
                     remove it from the file to have one generated)"
                ));
            }
        }
        if credential_eq(&self.admin_token, &self.write_key) {
            return bad("admin_token and write_key are the same; they must differ".into());
        }
        Ok(())
    }
}

/// Constant-time comparison of a presented credential with the expected one.
pub fn credential_eq(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    // Hash both so the comparison time does not depend on lengths either.
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_stable() {
        let dir = tempfile::tempdir().unwrap();
        let s1 = Secrets::load_or_create(dir.path(), None, None).unwrap();
        assert_eq!(s1.generated.len(), 2);
        let s2 = Secrets::load_or_create(dir.path(), None, None).unwrap();
        assert!(s2.generated.is_empty());
        assert_eq!(s1.admin_token, s2.admin_token);
        assert_eq!(s1.pseudonym_key, s2.pseudonym_key);
        let s3 = Secrets::load_or_create(dir.path(), Some("mine-mine-mine-mine"), None).unwrap();
        assert_eq!(s3.admin_token, "mine-mine-mine-mine");
        assert!(!format!("{s3:?}").contains("mine"));
        // Short, empty or identical credentials are refused from any source.
        for (admin, write) in [
            (Some("short"), None),
            (Some(""), None),
            (None, Some("tiny")),
            (Some("same-credential-twice"), Some("same-credential-twice")),
        ] {
            let e = Secrets::load_or_create(dir.path(), admin, write).unwrap_err();
            assert!(matches!(e, SecretsError::Invalid { .. }), "{e}");
        }
        let file = dir.path().join("secrets.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        let edited: String = text
            .lines()
            .map(|l| {
                if l.starts_with("write_key") {
                    "write_key = \"\""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&file, edited).unwrap();
        let e = Secrets::load_or_create(dir.path(), None, None).unwrap_err();
        assert!(
            e.to_string().contains("write_key is shorter than 16"),
            "{e}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secrets.toml"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(credential_eq("abc", "abc"));
        assert!(!credential_eq("abc", "abd"));
    }
}
