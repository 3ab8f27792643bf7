//! Names in NATS for one cluster (the stream, the buckets, the subjects, all under the
//! configured prefix) and which partition a user belongs to.

use trimtab_privacy::UserKey;

/// The names of one cluster's stream, buckets and subjects.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The events stream (JetStream names take no dots).
    pub fn stream(&self) -> String {
        format!("{}_events", self.prefix)
    }

    /// Every event subject: `<prefix>.ev.<partition>.<user key>`.
    pub fn events_all(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// One user's events: a subject of its own, so that erasure can purge exactly them.
    pub fn events(&self, part: u32, user: &UserKey) -> String {
        format!("{}.ev.{part}.{}", self.prefix, user.hex())
    }

    /// Every event of one partition, in the stream's order.
    pub fn partition(&self, part: u32) -> String {
        format!("{}.ev.{part}.>", self.prefix)
    }

    /// Requests to a partition's owner (export, erase, decide).
    pub fn rpc(&self, part: u32) -> String {
        format!("{}.rpc.{part}", self.prefix)
    }

    /// Frames for the sockets one node holds.
    pub fn push(&self, node: &str) -> String {
        format!("{}.push.{node}", self.prefix)
    }

    /// Bandit decisions and outcomes, for every node's learner.
    pub fn learn(&self) -> String {
        format!("{}.learn", self.prefix)
    }

    /// Experiment statistics, asked of every node.
    pub fn stats(&self) -> String {
        format!("{}.stats", self.prefix)
    }

    /// Erasure, told to every node.
    pub fn erase(&self) -> String {
        format!("{}.erase", self.prefix)
    }

    /// Partition leases: key `p<n>`, value the owner's name.
    pub fn leases(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    /// Live nodes: key the node's name, renewed with its leases.
    pub fn nodes(&self) -> String {
        format!("{}_nodes", self.prefix)
    }

    /// Shared definitions: key `<kind>.<name>`.
    pub fn defs(&self) -> String {
        format!("{}_defs", self.prefix)
    }

    /// The cluster's own facts (the secrets' fingerprint).
    pub fn meta(&self) -> String {
        format!("{}_cluster", self.prefix)
    }

    /// Checkpoints: users' sealed images and each partition's mark (a stream, two messages
    /// kept per subject: the newest and the one before).
    pub fn state(&self) -> String {
        format!("{}_state", self.prefix)
    }

    /// Every checkpoint subject.
    pub fn state_all(&self) -> String {
        format!("{}.st.>", self.prefix)
    }

    /// One user's sealed image: `<prefix>.st.u.<partition>.<tag>`, where the tag is a hash
    /// keyed by the user's checkpoint key (so that once erasure shreds that key, nothing
    /// ties an image left in a block file to the user).
    pub fn image(&self, part: u32, tag: &str) -> String {
        format!("{}.st.u.{part}.{tag}", self.prefix)
    }

    /// Every user image of a partition.
    pub fn images(&self, part: u32) -> String {
        format!("{}.st.u.{part}.>", self.prefix)
    }

    /// A partition's checkpoint mark: how far its images cover the stream, and its
    /// experiment statistics.
    pub fn mark(&self, part: u32) -> String {
        format!("{}.st.p.{part}", self.prefix)
    }

    /// Users' checkpoint keys (wrapped): key `<partition>.<user key>`.
    pub fn keys(&self) -> String {
        format!("{}_keys", self.prefix)
    }

    /// A user's entry in the keys bucket.
    pub fn key(part: u32, user: &UserKey) -> String {
        format!("{part}.{}", user.hex())
    }
}

/// The lease key of a partition.
pub fn lease_key(part: u32) -> String {
    format!("p{part}")
}

/// Which of `n` partitions `user` is in (the engine's rule: it keeps statistics per partition).
pub fn partition(user: &UserKey, n: u32) -> u32 {
    trimtab_engine::config::partition(user, n)
}

/// How much `node` prefers `part` (rendezvous hashing, FNV-1a): every node ranks the
/// partitions differently, so free partitions spread without coordination, and the same node
/// prefers the same partitions after a restart.
pub fn preference(node: &str, part: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(part.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix, so that neighbouring partitions do not rank alike.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_the_range_evenly() {
        let n = 8;
        let mut counts = [0u32; 8];
        for i in 0..8000u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            counts[partition(&UserKey(k), n) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn preferences_differ_by_node() {
        let rank = |node: &str| {
            let mut v: Vec<u32> = (0..16).collect();
            v.sort_by_key(|p| std::cmp::Reverse(preference(node, *p)));
            v
        };
        assert_eq!(rank("n1"), rank("n1"));
        assert_ne!(rank("n1"), rank("n2"));
        assert_ne!(rank("n2"), rank("n3"));
    }

    #[test]
    fn subjects() {
        let n = Names::new("tt");
        let u = UserKey([0xab; 16]);
        assert_eq!(n.events(3, &u), format!("tt.ev.3.{}", "ab".repeat(16)));
        assert_eq!(n.partition(3), "tt.ev.3.>");
        assert_eq!(n.stream(), "tt_events");
        assert_eq!(n.image(3, "0f"), "tt.st.u.3.0f");
        assert_eq!(n.images(3), "tt.st.u.3.>");
        assert_eq!(n.mark(3), "tt.st.p.3");
        assert_eq!(Names::key(3, &u), format!("3.{}", "ab".repeat(16)));
        // A partition's images are not another's (3 is not a prefix match of 31).
        assert!(!n
            .image(31, "0f")
            .starts_with(&n.images(3)[..n.images(3).len() - 1]));
    }
}
