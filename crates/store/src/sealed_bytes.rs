//! How the log encodes the sealed records of a [`super::UserRows`]: as byte strings
//! (`serialize_bytes`) rather than serde's default for a `Vec<u8>`, a sequence of `u8`
//! serialised one call per byte (≈ 2.5% of HTTP ingest's instructions, in the writer). postcard
//! writes both the same way — a varint length, then the bytes — so a log written before reads
//! the same, and one written now reads the same as it would have then (tested below).

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// A sealed record, borrowed for encoding.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// A sealed record, decoded (from a byte string, or a sequence of `u8` for formats that write
/// one).
struct Owned(Vec<u8>);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Owned, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Owned;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sealed record (bytes)")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Owned, E> {
                Ok(Owned(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Owned, E> {
                Ok(Owned(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Owned, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Owned(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Events: (seq, id hash, sealed).
type Events = Vec<(u64, [u8; 16], Vec<u8>)>;

/// `Vec<(u64, [u8; 16], Vec<u8>)>`: events (seq, id hash, sealed).
pub(super) mod events {
    use super::*;

    pub fn serialize<S: Serializer>(
        v: &[(u64, [u8; 16], Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(a, b, c)| (a, b, Bytes(c))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
        let v: Vec<(u64, [u8; 16], Owned)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|(a, b, c)| (a, b, c.0)).collect())
    }
}

/// `Vec<(K, Vec<u8>)>`: journal records by seq, decisions and learning records by id.
pub(super) mod keyed {
    use super::*;

    pub fn serialize<K: Serialize, S: Serializer>(
        v: &[(K, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, b)| (k, Bytes(b))))
    }

    pub fn deserialize<'de, K: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(K, Vec<u8>)>, D::Error> {
        let v: Vec<(K, Owned)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|(k, b)| (k, b.0)).collect())
    }
}

/// `Option<(u64, Vec<u8>)>`: a checkpoint (head, sealed state).
pub(super) mod checkpoint {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<(u64, Vec<u8>)>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some((h, b)) => s.serialize_some(&(h, Bytes(b))),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(u64, Vec<u8>)>, D::Error> {
        let v: Option<(u64, Owned)> = Deserialize::deserialize(d)?;
        Ok(v.map(|(h, b)| (h, b.0)))
    }
}

#[cfg(test)]
mod tests {
    use crate::wal::Batch;
    use crate::UserRows;
    use trimtab_privacy::{RowId, UserKey};

    /// `UserRows` as the log encoded it before: serde's derived encoding throughout.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Before {
        row: RowId,
        events: Vec<(u64, [u8; 16], Vec<u8>)>,
        journal: Vec<(u64, Vec<u8>)>,
        decisions: Vec<([u8; 16], Vec<u8>)>,
        learn: Vec<([u8; 16], Vec<u8>)>,
        checkpoint: Option<(u64, Vec<u8>)>,
    }

    fn sample(checkpoint: bool) -> (UserRows, Before) {
        let sealed = |n: usize, b: u8| (0..n).map(|i| b.wrapping_add(i as u8)).collect::<Vec<u8>>();
        let before = Before {
            row: RowId([9; 16]),
            events: vec![(3, [1; 16], sealed(300, 7)), (4, [2; 16], sealed(0, 0))],
            journal: vec![(3, sealed(130, 1))],
            decisions: vec![([5; 16], sealed(90, 2))],
            learn: vec![([6; 16], sealed(200, 3)), ([7; 16], sealed(1, 4))],
            checkpoint: checkpoint.then(|| (5, sealed(526, 5))),
        };
        let rows = UserRows {
            row: before.row,
            user: UserKey([0; 16]),
            events: before.events.clone(),
            journal: before.journal.clone(),
            decisions: before.decisions.clone(),
            learn: before.learn.clone(),
            checkpoint: before.checkpoint.clone(),
        };
        (rows, before)
    }

    #[test]
    fn the_log_encoding_is_unchanged_and_reads_both_ways() {
        for with_checkpoint in [true, false] {
            let (rows, before) = sample(with_checkpoint);
            let old = postcard::to_allocvec(&before).unwrap();
            let new = postcard::to_allocvec(&rows).unwrap();
            assert_eq!(new, old, "checkpoint {with_checkpoint}");
            let back: UserRows = postcard::from_bytes(&old).unwrap();
            assert_eq!(
                (&back.events, &back.journal, &back.decisions),
                (&before.events, &before.journal, &before.decisions)
            );
            assert_eq!(
                (&back.learn, &back.checkpoint),
                (&before.learn, &before.checkpoint)
            );
            let again: Before = postcard::from_bytes(&new).unwrap();
            assert_eq!(again, before);
        }
        // A whole batch, as the log's records hold it.
        let batch = Batch {
            rows: vec![sample(true).0, sample(false).0],
            stats: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&batch).unwrap();
        let back: Batch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.rows[0].checkpoint, sample(true).1.checkpoint);
        assert_eq!(back.rows[1].events, sample(false).1.events);
    }
}
