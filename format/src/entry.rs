//! The versioned record every structure of the store holds, and its ordering.

use std::cmp::Ordering;

use bytes::Bytes;

/// What a record does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sets the key to the record's value.
    Put = 1,
    /// Removes the key (a tombstone); the value is empty by convention.
    Delete = 2,
}

impl Kind {
    /// The byte stored on disk.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The kind for a stored byte, or `None` for an unknown one.
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// One versioned record.
///
/// Ordering in SSTs and memtables ("internal key order", see [`internal_cmp`]): key
/// ascending (bytewise), then seq descending, so the newest version of a key comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The user key.
    pub key: Bytes,
    /// Commit sequence number (the key's version).
    pub seq: u64,
    /// Put or delete.
    pub kind: Kind,
    /// Absolute expiry time in Unix milliseconds; 0 means never.
    pub expires_at_ms: u64,
    /// The value; empty for [`Kind::Delete`].
    pub value: Bytes,
}

impl Entry {
    /// A put that never expires.
    pub fn put(key: impl Into<Bytes>, seq: u64, value: impl Into<Bytes>) -> Entry {
        Entry {
            key: key.into(),
            seq,
            kind: Kind::Put,
            expires_at_ms: 0,
            value: value.into(),
        }
    }

    /// A tombstone.
    pub fn delete(key: impl Into<Bytes>, seq: u64) -> Entry {
        Entry {
            key: key.into(),
            seq,
            kind: Kind::Delete,
            expires_at_ms: 0,
            value: Bytes::new(),
        }
    }

    /// True when the entry has a TTL that has passed at `now_ms` (expiry is inclusive).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// Compares two entries in internal key order.
    pub fn internal_cmp(&self, other: &Entry) -> Ordering {
        internal_cmp(&self.key, self.seq, &other.key, other.seq)
    }
}

/// Internal key order: key ascending (bytewise), then seq descending.
pub fn internal_cmp(a_key: &[u8], a_seq: u64, b_key: &[u8], b_seq: u64) -> Ordering {
    a_key.cmp(b_key).then_with(|| b_seq.cmp(&a_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_order_is_key_asc_seq_desc() {
        assert_eq!(internal_cmp(b"a", 1, b"b", 9), Ordering::Less);
        assert_eq!(internal_cmp(b"a", 9, b"a", 1), Ordering::Less);
        assert_eq!(internal_cmp(b"a", 1, b"a", 9), Ordering::Greater);
        assert_eq!(internal_cmp(b"a", 5, b"a", 5), Ordering::Equal);
        assert_eq!(internal_cmp(b"", 0, b"a", 0), Ordering::Less);
        assert_eq!(internal_cmp(b"ab", 0, b"a", 0), Ordering::Greater);
    }

    #[test]
    fn kind_bytes() {
        for k in [Kind::Put, Kind::Delete] {
            assert_eq!(Kind::from_u8(k.as_u8()), Some(k));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(3), None);
    }

    #[test]
    fn expiry() {
        let mut e = Entry::put("k", 1, "v");
        assert!(!e.is_expired(u64::MAX));
        e.expires_at_ms = 100;
        assert!(!e.is_expired(99));
        assert!(e.is_expired(100));
    }
}
