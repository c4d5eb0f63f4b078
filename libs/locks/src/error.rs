//! Errors of the lock operations (the C API returns them as negative codes).

/// Why a lock operation was refused. Nothing was changed when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A NULL or destroyed handle, or an index not below [`crate::PercpuMutex::count`].
    InvalidArgument,
    /// The lock is held (try-lock, destroy).
    Busy,
    /// The caller does not hold the lock it tries to release.
    NotOwner,
    /// The caller already holds the lock it tries to take.
    Deadlock,
    /// No memory for a new lock.
    NoMemory,
    /// A system call the lock relies on failed unexpectedly.
    Internal,
}

impl Error {
    /// The C API's code (`PLOCK_E*` in plocks.h).
    pub fn code(self) -> i32 {
        match self {
            Error::InvalidArgument => -1,
            Error::Busy => -2,
            Error::NotOwner => -3,
            Error::Deadlock => -4,
            Error::NoMemory => -5,
            Error::Internal => -6,
        }
    }

    /// A short description.
    pub fn message(self) -> &'static str {
        match self {
            Error::InvalidArgument => "invalid argument (NULL or destroyed lock, index out of range)",
            Error::Busy => "the lock is held",
            Error::NotOwner => "the caller does not hold this lock",
            Error::Deadlock => "the caller already holds this lock",
            Error::NoMemory => "out of memory",
            Error::Internal => "internal error",
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}
