//! Tenant namespaces as key prefixes.
//!
//! With a tokens file (`strata serve --tokens`), every tenant's keys live under its
//! namespace's prefix: `NAMESPACE_MARKER`, the name, then `/`. Names are 1 to
//! [`MAX_NAMESPACE_BYTES`] bytes of `[A-Za-z0-9_.-]`, so no name's prefix is a prefix of
//! another's (the `/` ends every name and cannot appear inside one): namespaces are disjoint
//! key ranges by construction. The server adds the prefix to every key a tenant sends and
//! strips it from every key it returns; the compactor's export reads it back with
//! [`split`].
//!
//! Without tokens every key is in the default namespace, stored as sent; keys starting with
//! the marker are then reserved (refused as `RESERVED_KEY`), so that turning tokens on later
//! never puts a key written before into a tenant's range.

/// The first bytes of every namespaced key (outside the store's own `\xff\xff` records).
pub const NAMESPACE_MARKER: &[u8] = b"\xff\xfens/";

/// Longest namespace name.
pub const MAX_NAMESPACE_BYTES: usize = 64;

/// Longest namespace prefix (marker, name, `/`).
pub const MAX_PREFIX_BYTES: usize = NAMESPACE_MARKER.len() + MAX_NAMESPACE_BYTES + 1;

/// Whether `name` is a valid namespace name; the message says why not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAMESPACE_BYTES {
        return Err(format!(
            "namespace {name:?}: must be 1 to {MAX_NAMESPACE_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "namespace {name:?}: {c:?} is not allowed (letters, digits, '_', '.', '-')"
        ));
    }
    Ok(())
}

/// The key prefix of namespace `name` (assumed valid: see [`check_name`]).
pub fn prefix(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(NAMESPACE_MARKER.len() + name.len() + 1);
    p.extend_from_slice(NAMESPACE_MARKER);
    p.extend_from_slice(name.as_bytes());
    p.push(b'/');
    p
}

/// The first key after every key of the namespace whose prefix is `prefix` (`/` + 1 = `0`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut e = prefix.to_vec();
    if let Some(last) = e.last_mut() {
        *last += 1;
    }
    e
}

/// Whether `key` is in some namespace's range (reserved in the default namespace).
pub fn is_namespaced(key: &[u8]) -> bool {
    key.starts_with(NAMESPACE_MARKER)
}

/// A stored key as its tenant sees it: `(namespace, key)`, or `None` for a key of the
/// default namespace (no marker, or a marker without a well-formed name).
pub fn split(key: &[u8]) -> Option<(&str, &[u8])> {
    let rest = key.strip_prefix(NAMESPACE_MARKER)?;
    let end = rest.iter().position(|&b| b == b'/')?;
    let (name, tail) = rest.split_at(end);
    let name = std::str::from_utf8(name).ok()?;
    check_name(name).ok()?;
    Some((name, tail.get(1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("alpha").is_ok());
        assert!(check_name("a.b-c_9").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("ä").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn prefixes_are_disjoint_and_split_back() {
        let a = prefix("a");
        let ab = prefix("ab");
        assert!(!ab.starts_with(&a) && !a.starts_with(&ab));
        // Every key of "a" sorts inside [prefix, prefix_end) and outside "ab"'s range.
        let mut k = a.clone();
        k.extend_from_slice(b"\xff\xff\xff");
        assert!(k.as_slice() >= a.as_slice() && k < prefix_end(&a));
        assert!(!(k.as_slice() >= ab.as_slice() && k < prefix_end(&ab)));
        assert_eq!(split(&k), Some(("a", &b"\xff\xff\xff"[..])));
        assert_eq!(split(b"plain"), None);
        assert!(is_namespaced(&k) && !is_namespaced(b"plain"));
    }
}
