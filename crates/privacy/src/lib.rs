//! trimtab-privacy: privacy by default — pseudonymous user keys, signed user tokens, the
//! instance's secrets, and per-user encryption keys that make erasure final (crypto-shredding).
//! A leaf: it depends on no other crate of trimtab, and must not learn about events or storage.
//!
//! Nothing in here touches the network or redb. The key store is written only by the writer
//! thread; shards read it (under a read lock) to decrypt a user's state when loading it.

pub mod crypto;
pub mod ids;
pub mod keystore;
pub mod master;
pub mod secrets;
pub mod token;

pub use crypto::{open_record, seal_record, Table};
pub use ids::{Pseudonymizer, RowId, UserKey};

/// A hash map keyed by [`UserKey`] or [`RowId`] (or anything else that is already the output
/// of a keyed hash): hashed with foldhash instead of SipHash, which was ≈ 6% of the
/// instructions of HTTP ingest (a dozen lookups per event in the shard, the indexer's and the
/// key store's maps). A key cannot be chosen to collide: user keys are HMACs under the
/// server's secret and row ids are random, and the hasher is seeded per process.
pub type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use keystore::KeyStore;
pub use master::MasterKey;
pub use secrets::Secrets;
pub use token::{TokenError, TokenSigner};
