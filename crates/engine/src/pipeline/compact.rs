//! The compact form of a cached user at rest (`pipeline.compact_idle_ms`).
//!
//! A full shard entry keeps the user's state in a dozen small allocations — maps, strings, the
//! interaction sequence — made while the user was active, among the load's short-lived ones
//! (parsed batches, sealed records, commit buffers). Once the user is idle they pin pages the
//! allocator could otherwise give back, and they are larger than the state they hold. At rest a
//! user is kept instead as one allocation: a short header and the state's encoding (the bytes
//! its checkpoint holds) compressed with zstd — the interaction sequence repeats itself
//! (`scroll:25`, `scroll:50`, … on every page). Its key stays where every key is, in the key
//! store. Taking it back decodes the state: no store read, no replay.

use trimtab_privacy::UserKey;

use crate::features::UserState;

/// Header: when the user was last used (i64 LE), whether the store may hold its rows (1 byte),
/// the encoded state's length (u32 LE); then the compressed state.
const HEAD: usize = 13;

/// zstd's fastest level: compaction runs on the shard thread.
const LEVEL: i32 = 1;

/// One user at rest, in one allocation (see the module doc).
pub(super) struct Compact(Box<[u8]>);

impl Compact {
    pub fn last_used(&self) -> i64 {
        i64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    pub fn stored(&self) -> bool {
        self.0[8] == 1
    }

    fn state_len(&self) -> usize {
        u32::from_le_bytes(self.0[9..HEAD].try_into().expect("4 bytes")) as usize
    }

    /// What it takes in the shard's table, with the table's slot.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<(UserKey, Compact)>() + self.0.len()
    }
}

/// A shard's compression contexts, made on first use and reused (a context is a few hundred
/// KiB of tables: not one per user).
#[derive(Default)]
pub(super) struct Packer {
    zip: Option<zstd::bulk::Compressor<'static>>,
    unzip: Option<zstd::bulk::Decompressor<'static>>,
}

impl Packer {
    /// The compact form of a state, or `None` if compression failed (the user then stays as it
    /// is: nothing is lost).
    pub fn pack(&mut self, state: &UserState, last_used: i64, stored: bool) -> Option<Compact> {
        let plain = state.encode();
        let len = u32::try_from(plain.len()).ok()?;
        if self.zip.is_none() {
            self.zip = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        let zipped = self.zip.as_mut()?.compress(&plain).ok()?;
        let mut b = Vec::with_capacity(HEAD + zipped.len());
        b.extend_from_slice(&last_used.to_le_bytes());
        b.push(u8::from(stored));
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&zipped);
        Some(Compact(b.into_boxed_slice()))
    }

    /// The state back, or `None` if it does not decompress or decode (cannot happen to what
    /// [`Packer::pack`] made; the caller then loads the user from the store).
    pub fn unpack(&mut self, c: &Compact) -> Option<UserState> {
        if self.unzip.is_none() {
            self.unzip = zstd::bulk::Decompressor::new().ok();
        }
        let plain = self
            .unzip
            .as_mut()?
            .decompress(&c.0[HEAD..], c.state_len())
            .ok()?;
        UserState::decode(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureConfig;
    use trimtab_wire::{parse_batch, Limits};

    #[test]
    fn a_packed_state_comes_back_equal_and_smaller() {
        let now = 1_700_000_000_000;
        let evs: Vec<serde_json::Value> = (0..40)
            .flat_map(|p| {
                [
                    serde_json::json!({"id": format!("v{p}"), "type": "page_view", "session": "s",
                        "ts": now, "props": {"path": format!("/product/{p}")},
                        "consent": {"analytics": true, "personalization": true}}),
                    serde_json::json!({"id": format!("s{p}"), "type": "scroll", "session": "s",
                        "ts": now, "props": {"depth": 50},
                        "consent": {"analytics": true, "personalization": true}}),
                ]
            })
            .collect();
        let body = serde_json::json!({ "events": evs }).to_string();
        let cfg = FeatureConfig::default();
        let mut state = UserState::default();
        for e in parse_batch(body.as_bytes(), &Limits::default(), now)
            .unwrap()
            .events
        {
            state.apply(&e.event, &cfg);
        }
        let mut p = Packer::default();
        let c = p.pack(&state, now + 5, true).expect("packed");
        assert_eq!(c.last_used(), now + 5);
        assert!(c.stored());
        let plain = state.encode().len();
        assert!(
            c.0.len() < plain / 2,
            "{} bytes packed, {plain} encoded",
            c.0.len()
        );
        assert_eq!(p.unpack(&c).expect("unpacked"), state);
        let c = p.pack(&state, 7, false).expect("packed");
        assert!(!c.stored());
        assert_eq!(p.unpack(&c).expect("unpacked"), state);
        // A damaged one is refused, not misread.
        let mut bad = c.0.to_vec();
        let n = bad.len();
        bad[n - 3] ^= 0xff;
        bad.truncate(n - 1);
        assert!(p.unpack(&Compact(bad.into_boxed_slice())).is_none());
    }
}
