//! A cached user's filter of the event ids the store holds for it (its `seen_runs`): a Bloom
//! filter over their fingerprints, filled from one read of the user's runs and
//! kept up to date as checkpoints file the user's pending ids, so that a batch of new ids —
//! nearly every batch — is checked without a store read (that read, per user and batch, was 8%
//! of the server's CPU under HTTP load: BENCHMARKS.md, eleventh session).
//!
//! It only ever answers "not stored" for certain. "Maybe" means a store read. The filter grows
//! with the user: 4 bits an id in 512 bits for up to 72 ids, and when a user outgrows its
//! filter it is built again, from one read, twice or four times as large, up to 4 096 bits
//! (512 bytes, [`MAX_IDS`] ids). A user with more stored ids than that reads the store for
//! every batch, as without the filter. The filter may hold ids the store no longer has
//! (retention drops old runs): that costs a read, never a wrong answer.
//!
//! The invariant the shard keeps: while built, the filter together with the entry's pending
//! ids holds every id the store has for the user (the filter is built from a snapshot that
//! holds every id pruned from `pending` so far, and every id pruned afterwards is inserted; a
//! filter that cannot take one more id goes back to not built, and the next check builds it
//! again, larger, from the store).

/// Ids a filter of `words` 64-bit words holds well: 9 a word (4 bits an id; false "maybe"
/// ≈ 3% an id when full).
const IDS_PER_WORD: usize = 9;
/// Words of the smallest filter (inline: 512 bits, 72 ids).
const SMALL_WORDS: usize = 8;
/// Words of the largest filter (4 096 bits, 512 bytes).
const MAX_WORDS: usize = 64;
/// Stored ids past which the filter is given up (every batch then reads the store).
pub(super) const MAX_IDS: usize = MAX_WORDS * IDS_PER_WORD;

const NOT_BUILT: u16 = u16::MAX;
const SATURATED: u16 = u16::MAX - 1;

#[derive(Clone, Debug)]
enum Bits {
    /// The filter of most users, inline in the cache entry.
    Small([u64; SMALL_WORDS]),
    /// A user that outgrew it: 16, 32 or 64 words.
    Large(Box<[u64]>),
}

impl Bits {
    fn words(&self) -> &[u64] {
        match self {
            Bits::Small(w) => w,
            Bits::Large(w) => w,
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Bits::Small(w) => w,
            Bits::Large(w) => w,
        }
    }
}

/// The filter; starts not built (every check reads the store until [`SeenFilter::build`]).
#[derive(Clone, Debug)]
pub(super) struct SeenFilter {
    bits: Bits,
    /// Ids inserted, or [`NOT_BUILT`] / [`SATURATED`].
    n: u16,
}

impl Default for SeenFilter {
    fn default() -> SeenFilter {
        SeenFilter {
            bits: Bits::Small([0; SMALL_WORDS]),
            n: NOT_BUILT,
        }
    }
}

/// Four bit positions in a filter of `words` words (a power of two, at most 64: 12 bits a
/// position) from a fingerprint, the first 8 bytes of a keyed hash: uniformly distributed, so
/// its bits serve directly.
fn positions(fp: u64, words: usize) -> [usize; 4] {
    let mask = (words * 64 - 1) as u64;
    [0, 16, 32, 48].map(|s| ((fp >> s) & mask) as usize)
}

impl SeenFilter {
    /// Whether the filter answers (built and not saturated).
    pub(super) fn usable(&self) -> bool {
        usize::from(self.n) <= self.capacity()
    }

    pub(super) fn built(&self) -> bool {
        self.n != NOT_BUILT
    }

    /// Ids this filter holds well.
    fn capacity(&self) -> usize {
        self.bits.words().len() * IDS_PER_WORD
    }

    /// Heap bytes beyond the entry (a filter that grew).
    pub(super) fn heap_bytes(&self) -> usize {
        match &self.bits {
            Bits::Small(_) => 0,
            Bits::Large(w) => w.len() * 8,
        }
    }

    /// Starts over from the user's stored fingerprints (all of them, from one snapshot),
    /// sized for half as many again (so that it grows a few times at most); more than
    /// [`MAX_IDS`] ids: saturated.
    pub(super) fn build(&mut self, stored: &[u64]) {
        let want = (stored.len() + stored.len() / 2).min(MAX_IDS);
        let mut words = SMALL_WORDS;
        while words * IDS_PER_WORD < want {
            words *= 2;
        }
        self.bits = if words == SMALL_WORDS {
            Bits::Small([0; SMALL_WORDS])
        } else {
            Bits::Large(vec![0; words].into_boxed_slice())
        };
        if stored.len() > MAX_IDS {
            self.n = SATURATED;
            return;
        }
        self.n = 0;
        for fp in stored {
            self.insert(*fp);
        }
    }

    /// Records an id the store now holds (nothing if not built or saturated). A full filter
    /// goes back to not built (its ids cannot be taken out of it), to be built again larger.
    pub(super) fn insert(&mut self, fp: u64) {
        if !self.usable() {
            return;
        }
        let cap = self.capacity();
        if usize::from(self.n) == cap {
            self.n = if cap < MAX_IDS { NOT_BUILT } else { SATURATED };
            return;
        }
        let words = self.bits.words_mut();
        for p in positions(fp, words.len()) {
            words[p / 64] |= 1 << (p % 64);
        }
        self.n += 1;
    }

    /// `false`: the store certainly does not hold the id. `true` when unsure, or unusable.
    pub(super) fn may_hold(&self, fp: u64) -> bool {
        let words = self.bits.words();
        !self.usable()
            || positions(fp, words.len())
                .iter()
                .all(|p| words[p / 64] & (1 << (p % 64)) != 0)
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

    /// Unstored ids (out of 100 000) the filter says it may hold.
    fn false_maybes(f: &SeenFilter) -> usize {
        (1_000_000..1_100_000)
            .filter(|i| f.may_hold(fp(*i)))
            .count()
    }

    #[test]
    fn never_denies_a_stored_id_and_rarely_admits_another() {
        let mut f = SeenFilter::default();
        assert!(!f.built() && !f.usable() && f.may_hold(fp(0)));
        let first: Vec<u64> = (0..40).map(fp).collect();
        f.build(&first);
        assert!(f.built() && f.usable());
        assert_eq!(f.heap_bytes(), 0, "up to 72 ids the filter is inline");
        for i in 40..72 {
            f.insert(fp(i));
        }
        assert!(f.usable());
        assert!((0..72).all(|i| f.may_hold(fp(i))));
        let n = false_maybes(&f);
        assert!(n < 5_000, "{n} of 100 000 unstored ids maybe");
        // One more id than it holds well: not built again, so every check reads (and builds).
        f.insert(fp(72));
        assert!(!f.built() && !f.usable());
        assert!((1_000..2_000).all(|i| f.may_hold(fp(i))));
        f.insert(fp(73));
        assert!(!f.built());
        // Built again from the store's 74 ids: larger, for half as many again.
        let stored: Vec<u64> = (0..74).map(fp).collect();
        f.build(&stored);
        assert!(f.usable());
        assert_eq!(f.heap_bytes(), 128, "16 words: 144 ids");
        assert!((0..74).all(|i| f.may_hold(fp(i))));
        let n = false_maybes(&f);
        assert!(n < 1_000, "{n} of 100 000 unstored ids maybe");
        // Grown up to the largest filter, full: still exact about stored ids, rarely wrong
        // about others; one more id gives it up for good.
        let many: Vec<u64> = (0..MAX_IDS as u64).map(fp).collect();
        f.build(&many);
        assert!(f.usable());
        assert_eq!(f.heap_bytes(), 512);
        assert!(many.iter().all(|x| f.may_hold(*x)));
        let n = false_maybes(&f);
        assert!(n < 5_000, "{n} of 100 000 unstored ids maybe");
        f.insert(fp(1_000_000_000));
        assert!(f.built() && !f.usable(), "saturated");
        assert!(f.may_hold(fp(1_000_001)));
        // More stored ids than the largest filter holds: saturated from the start.
        let more: Vec<u64> = (0..MAX_IDS as u64 + 1).map(fp).collect();
        f.build(&more);
        assert!(f.built() && !f.usable());
        // Rebuilt from fewer ids (the user loaded again): usable again, and small.
        f.build(&first[..3]);
        assert!(f.usable() && f.may_hold(fp(2)));
        assert_eq!(f.heap_bytes(), 0);
    }
}
