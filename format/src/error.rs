//! The one error type of the crate.

/// Why an encoded object could not be decoded, or why an encoder refused its input.
///
/// Every decode path returns one of these instead of panicking: a corrupt or truncated
/// object is an error, never silently wrong data.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A stored crc32c did not match the bytes it covers.
    #[error("checksum mismatch in {what}: expected {expected:#010x}, got {actual:#010x}")]
    Checksum {
        /// Which structure failed ("wal record", "sst block", ...).
        what: &'static str,
        /// The checksum stored in the object.
        expected: u32,
        /// The checksum computed over the bytes read.
        actual: u32,
    },
    /// The bytes are structurally invalid (bad magic, truncated, lengths out of range, ...).
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which structure is corrupt.
        what: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// The object was written by a format version this code does not understand.
    #[error("unsupported {what} format version {version}")]
    UnsupportedVersion {
        /// Which structure carries the version.
        what: &'static str,
        /// The version found in the object.
        version: u32,
    },
    /// The caller broke an encoder's contract (e.g. `SstBuilder::add` out of order).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, FormatError>;

/// Shorthand for a [`FormatError::Corrupt`].
pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Corrupt {
        what,
        detail: detail.into(),
    }
}

/// Checks `actual` against `expected`, naming `what` in the error.
pub(crate) fn check_crc(what: &'static str, expected: u32, actual: u32) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(FormatError::Checksum {
            what,
            expected,
            actual,
        })
    }
}
