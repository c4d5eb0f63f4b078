//! Errors, their C codes, and counter-name rules.

use core::fmt;
use std::collections::TryReserveError;

/// Longest counter name in bytes (`PCOUNTERS_NAME_MAX`).
pub const NAME_MAX: usize = 127;

/// Why an operation was refused. Every variant has a stable C code ([`Error::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// A null pointer, a malformed or forged handle, an unknown index mode, or a name that
    /// is empty or has a character outside `[a-zA-Z0-9_:]` (or starts with a digit).
    InvalidArgument,
    /// The handle names a counter that was deleted, or no counter has that name.
    NotFound,
    /// A counter with that name exists already.
    Exists,
    /// The name is longer than [`NAME_MAX`] bytes.
    NameTooLong,
    /// Memory could not be allocated.
    OutOfMemory,
    /// Every one of the [`MAX_COUNTERS`](crate::MAX_COUNTERS) counter slots is in use.
    NoSpace,
    /// The caller's buffer is too small for the result.
    BufferTooSmall,
    /// A bug in the library (a caught panic). Never returned for any caller input.
    Internal,
}

/// `PCOUNTERS_OK`.
pub const PCOUNTERS_OK: i32 = 0;
/// `PCOUNTERS_EINVAL`.
pub const PCOUNTERS_EINVAL: i32 = -1;
/// `PCOUNTERS_ENOENT`.
pub const PCOUNTERS_ENOENT: i32 = -2;
/// `PCOUNTERS_EEXIST`.
pub const PCOUNTERS_EEXIST: i32 = -3;
/// `PCOUNTERS_ENAMETOOLONG`.
pub const PCOUNTERS_ENAMETOOLONG: i32 = -4;
/// `PCOUNTERS_ENOMEM`.
pub const PCOUNTERS_ENOMEM: i32 = -5;
/// `PCOUNTERS_ENOSPC`.
pub const PCOUNTERS_ENOSPC: i32 = -6;
/// `PCOUNTERS_ERANGE`.
pub const PCOUNTERS_ERANGE: i32 = -7;
/// `PCOUNTERS_EINTERNAL`.
pub const PCOUNTERS_EINTERNAL: i32 = -8;

impl Error {
    /// The C API's code for this error (a negative `PCOUNTERS_E*` value).
    pub const fn code(self) -> i32 {
        match self {
            Error::InvalidArgument => PCOUNTERS_EINVAL,
            Error::NotFound => PCOUNTERS_ENOENT,
            Error::Exists => PCOUNTERS_EEXIST,
            Error::NameTooLong => PCOUNTERS_ENAMETOOLONG,
            Error::OutOfMemory => PCOUNTERS_ENOMEM,
            Error::NoSpace => PCOUNTERS_ENOSPC,
            Error::BufferTooSmall => PCOUNTERS_ERANGE,
            Error::Internal => PCOUNTERS_EINTERNAL,
        }
    }

    /// The error a C code stands for; `None` for `PCOUNTERS_OK` and unknown codes.
    pub const fn from_code(code: i32) -> Option<Error> {
        Some(match code {
            PCOUNTERS_EINVAL => Error::InvalidArgument,
            PCOUNTERS_ENOENT => Error::NotFound,
            PCOUNTERS_EEXIST => Error::Exists,
            PCOUNTERS_ENAMETOOLONG => Error::NameTooLong,
            PCOUNTERS_ENOMEM => Error::OutOfMemory,
            PCOUNTERS_ENOSPC => Error::NoSpace,
            PCOUNTERS_ERANGE => Error::BufferTooSmall,
            PCOUNTERS_EINTERNAL => Error::Internal,
            _ => return None,
        })
    }

    /// A one-line description (also what `pcounters_strerror` returns).
    pub const fn message(self) -> &'static str {
        match self {
            Error::InvalidArgument => "invalid argument (null pointer, malformed handle, bad index mode or bad name)",
            Error::NotFound => "no such counter (deleted handle or unknown name)",
            Error::Exists => "a counter with this name exists already",
            Error::NameTooLong => "counter name longer than 127 bytes",
            Error::OutOfMemory => "out of memory",
            Error::NoSpace => "too many counters (1048576 slots in use)",
            Error::BufferTooSmall => "buffer too small for the result",
            Error::Internal => "internal error in libpcounters (a bug: please report it)",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<TryReserveError> for Error {
    fn from(_: TryReserveError) -> Error {
        Error::OutOfMemory
    }
}

/// Checks a counter name: 1 to [`NAME_MAX`] bytes of `[a-zA-Z_:][a-zA-Z0-9_:]*` (a valid
/// Prometheus metric name). Length is checked first, so an over-long name is `NameTooLong`
/// whatever its characters.
pub fn validate_name(name: &[u8]) -> Result<(), Error> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    let Some((&first, rest)) = name.split_first() else {
        return Err(Error::InvalidArgument);
    };
    let head = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b == b':';
    if !head(first) || !rest.iter().all(|&b| head(b) || b.is_ascii_digit()) {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}
