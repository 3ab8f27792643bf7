//! A cached user's filter of the event ids the store holds for it (its `seen_runs`): a
//! 512-bit Bloom filter over their fingerprints, filled from one read of the user's runs and
//! kept up to date as checkpoints file the user's pending ids, so that a batch of new ids —
//! nearly every batch — is checked without a store read (that read, per user and batch, was 8%
//! of the server's CPU under HTTP load: BENCHMARKS.md, eleventh session).
//!
//! It only ever answers "not stored" for certain. "Maybe" means a store read, and so does a
//! user with more stored ids than the filter tells apart well ([`CAPACITY`]): the filter is
//! then saturated and every batch reads, as without it. The filter may hold ids the store no
//! longer has (retention drops old runs): that costs a read, never a wrong answer.
//!
//! The invariant the shard keeps: while built, the filter together with the entry's pending
//! ids holds every id the store has for the user (the filter is built from a snapshot that
//! holds every id pruned from `pending` so far, and every id pruned afterwards is inserted).

/// Stored ids past which the filter is given up (false "maybe" rate ≈ 3% at 72 ids with 4 bits
/// an id in 512; then every batch reads the store).
pub(super) const CAPACITY: u16 = 72;

const NOT_BUILT: u16 = u16::MAX;
const SATURATED: u16 = u16::MAX - 1;

/// The filter; starts not built (every check reads the store until [`SeenFilter::build`]).
#[derive(Clone, Debug)]
pub(super) struct SeenFilter {
    bits: [u64; 8],
    /// Ids inserted, or [`NOT_BUILT`] / [`SATURATED`].
    n: u16,
}

impl Default for SeenFilter {
    fn default() -> SeenFilter {
        SeenFilter {
            bits: [0; 8],
            n: NOT_BUILT,
        }
    }
}

/// Four bit positions out of 512 from a fingerprint (the first 8 bytes of a keyed hash:
/// uniformly distributed, so its bits serve directly).
fn positions(fp: u64) -> [usize; 4] {
    [0, 9, 18, 27].map(|s| ((fp >> s) & 511) as usize)
}

impl SeenFilter {
    /// Whether the filter answers (built and not saturated).
    pub(super) fn usable(&self) -> bool {
        self.n <= CAPACITY
    }

    pub(super) fn built(&self) -> bool {
        self.n != NOT_BUILT
    }

    /// Starts over from the user's stored fingerprints (all of them, from one snapshot).
    pub(super) fn build(&mut self, stored: impl IntoIterator<Item = u64>) {
        self.bits = [0; 8];
        self.n = 0;
        for fp in stored {
            self.insert(fp);
        }
    }

    /// Records an id the store now holds (nothing if not built or saturated).
    pub(super) fn insert(&mut self, fp: u64) {
        if !self.usable() {
            return;
        }
        if self.n == CAPACITY {
            self.n = SATURATED;
            return;
        }
        for p in positions(fp) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.n += 1;
    }

    /// `false`: the store certainly does not hold the id. `true` when unsure, or unusable.
    pub(super) fn may_hold(&self, fp: u64) -> bool {
        !self.usable()
            || positions(fp)
                .iter()
                .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fingerprints as the store makes them: 8 bytes of a keyed hash (here SHA-256 of a
    /// counter, as uniformly spread).
    fn fp(i: u64) -> u64 {
        use sha2::Digest;
        let h = sha2::Sha256::digest(i.to_le_bytes());
        u64::from_le_bytes(h[..8].try_into().unwrap())
    }

    #[test]
    fn never_denies_a_stored_id_and_rarely_admits_another() {
        let mut f = SeenFilter::default();
        assert!(!f.built() && !f.usable() && f.may_hold(fp(0)));
        f.build((0..40).map(fp));
        assert!(f.built() && f.usable());
        for i in 40..CAPACITY as u64 {
            f.insert(fp(i));
        }
        assert!(f.usable());
        assert!((0..CAPACITY as u64).all(|i| f.may_hold(fp(i))));
        let false_maybe = (1_000..101_000).filter(|i| f.may_hold(fp(*i))).count();
        assert!(
            false_maybe < 5_000,
            "{false_maybe} of 100 000 unstored ids maybe"
        );
        // One more id than it holds well: given up, every check is "maybe".
        f.insert(fp(999_999));
        assert!(f.built() && !f.usable());
        assert!((1_000..2_000).all(|i| f.may_hold(fp(i))));
        f.insert(fp(1));
        assert!(!f.usable());
        // Rebuilt from fewer ids (the user loaded again): usable again.
        f.build((0..3).map(fp));
        assert!(f.usable() && f.may_hold(fp(2)));
    }
}
