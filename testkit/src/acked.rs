//! Acknowledged writes: what a test's writers were told succeeded, and the check that every
//! one of them reads back.
//!
//! A writer records each acknowledged write with what the acknowledgement established (the
//! value, and the version when the test checks it; only that the key exists; or that a delete
//! was acknowledged). After the fault (a `kill -9`, a restart, a failover), [`Acked::verify`]
//! reads every key back with a plain `Get` and panics naming the first key that is lost or
//! wrong. The newest record of a key wins, as the newest acknowledged write does in the store.
//!
//! Writes whose outcome is unknown (a timeout, a crash mid-request) are not recorded here: a
//! test that must also account for them (they may or may not have landed) keeps its own
//! bookkeeping.
//!
//! An [`Acked`] is shared by concurrent writers behind an `Arc` (its methods take `&self`);
//! `clone` copies the records.

use crate::kv::{b, get_req, Kv};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// What a read of an acknowledged key must return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Present with this value, and with this version when it is `Some`.
    Value { value: Bytes, version: Option<u64> },
    /// Present (value and version not checked).
    Present,
    /// Absent: the acknowledged write was a delete.
    Absent,
}

/// The acknowledged writes of a test, by key.
#[derive(Default, Debug)]
pub struct Acked {
    writes: Mutex<BTreeMap<Bytes, Expect>>,
}

impl Clone for Acked {
    fn clone(&self) -> Acked {
        Acked {
            writes: Mutex::new(self.lock().clone()),
        }
    }
}

/// Records with values, versions not checked.
impl FromIterator<(Bytes, Bytes)> for Acked {
    fn from_iter<I: IntoIterator<Item = (Bytes, Bytes)>>(iter: I) -> Acked {
        let a = Acked::new();
        for (k, v) in iter {
            a.record_value(k, v);
        }
        a
    }
}

impl Acked {
    pub fn new() -> Acked {
        Acked::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Bytes, Expect>> {
        // A writer that panicked while holding the lock left whole records behind.
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, key: impl AsRef<[u8]>, e: Expect) {
        self.lock().insert(b(key), e);
    }

    /// A put of `value` acknowledged with `version`: it must read back with both.
    pub fn record(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, version: u64) {
        self.set(
            key,
            Expect::Value {
                value: b(value),
                version: Some(version),
            },
        );
    }

    /// A put of `value` acknowledged: it must read back with that value (any version).
    pub fn record_value(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.set(
            key,
            Expect::Value {
                value: b(value),
                version: None,
            },
        );
    }

    /// A write of `key` acknowledged: the key must be present (value and version unchecked).
    pub fn record_present(&self, key: impl AsRef<[u8]>) {
        self.set(key, Expect::Present);
    }

    /// A delete of `key` acknowledged: the key must read as absent.
    pub fn record_delete(&self, key: impl AsRef<[u8]>) {
        self.set(key, Expect::Absent);
    }

    /// Adds `other`'s records (its records win for keys in both).
    pub fn extend(&self, other: &Acked) {
        let theirs = other.lock().clone();
        self.lock().extend(theirs);
    }

    /// How many keys have a record.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether `key` has a record.
    pub fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        self.lock().contains_key(key.as_ref())
    }

    /// What a read of `key` must return, if it has a record.
    pub fn expected(&self, key: impl AsRef<[u8]>) -> Option<Expect> {
        self.lock().get(key.as_ref()).cloned()
    }

    /// The keys with a record, in order.
    pub fn keys(&self) -> Vec<Bytes> {
        self.lock().keys().cloned().collect()
    }

    /// The keys recorded with a value, and that value, in key order.
    pub fn values(&self) -> BTreeMap<Bytes, Bytes> {
        self.lock()
            .iter()
            .filter_map(|(k, e)| match e {
                Expect::Value { value, .. } => Some((k.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    /// Reads every recorded key back through `c` (in key order) and panics at the first one
    /// lost or wrong, naming it; returns how many keys it checked.
    pub async fn verify(&self, c: &mut Kv) -> usize {
        self.check(c, "").await
    }

    /// [`Acked::verify`], with `via` (e.g. `node n2`) in the messages.
    pub async fn verify_via(&self, c: &mut Kv, via: &str) -> usize {
        self.check(c, &format!(" via {via}")).await
    }

    async fn check(&self, c: &mut Kv, via: &str) -> usize {
        let records: Vec<(Bytes, Expect)> = self
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        for (k, want) in &records {
            let g = c
                .get(get_req(k))
                .await
                .unwrap_or_else(|e| panic!("get {k:?}{via}: {e}"))
                .into_inner();
            match want {
                Expect::Value { value, version } => {
                    // The version is compared only when it was recorded.
                    let got = g
                        .found
                        .then(|| (g.value.clone(), version.map(|_| g.version)));
                    assert_eq!(
                        got,
                        Some((value.clone(), *version)),
                        "acknowledged write {k:?} lost or wrong when read{via}"
                    );
                }
                Expect::Present => {
                    assert!(g.found, "acknowledged write {k:?} lost when read{via}")
                }
                Expect::Absent => assert!(
                    !g.found,
                    "acknowledged delete of {k:?} lost when read{via}: reads version {}",
                    g.version
                ),
            }
        }
        records.len()
    }
}
