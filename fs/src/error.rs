//! Errors of the adapter and their errno: every failed request goes through [`FsError`], so
//! logging, counting and the errno mapping live in one place.

use cowstore::Error as StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The adapter itself refuses the request (unsupported flag or mode, bad argument).
    #[error("{why}")]
    Refused { errno: i32, why: &'static str },
    /// The store is closed (after `destroy`); no request should arrive then.
    #[error("the store is closed")]
    Closed,
    /// /dev/fuse refused a reply written to it directly (a spliced read).
    #[error("/dev/fuse refused a spliced reply: {0}")]
    Device(std::io::Error),
    /// The kernel refused a notification the request depends on (a writeback it must do).
    #[error("the kernel refused a notification: {0}")]
    Kernel(std::io::Error),
}

impl FsError {
    pub fn refused(errno: i32, why: &'static str) -> FsError {
        FsError::Refused { errno, why }
    }

    /// Whether the failure is a fault (I/O, corruption) rather than an answer the caller asked
    /// for (ENOENT, EEXIST, ...): faults are logged loudly.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            FsError::Store(StoreError::Io(_) | StoreError::Corrupted(_))
                | FsError::Closed
                | FsError::Device(_)
                | FsError::Kernel(_)
        )
    }
}

/// The errno a failure is reported to the kernel as.
pub trait ToErrno {
    fn to_errno(&self) -> i32;
}

impl ToErrno for StoreError {
    fn to_errno(&self) -> i32 {
        self.errno()
    }
}

impl ToErrno for FsError {
    fn to_errno(&self) -> i32 {
        match self {
            FsError::Store(e) => e.to_errno(),
            FsError::Refused { errno, .. } => *errno,
            FsError::Closed | FsError::Device(_) | FsError::Kernel(_) => libc::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(FsError::from(StoreError::NotFound).to_errno(), libc::ENOENT);
        assert_eq!(FsError::from(StoreError::NoAttr).to_errno(), libc::ENODATA);
        assert_eq!(FsError::from(StoreError::NoData).to_errno(), libc::ENXIO);
        assert_eq!(
            FsError::refused(libc::EOPNOTSUPP, "x").to_errno(),
            libc::EOPNOTSUPP
        );
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::from(StoreError::Io(io)).to_errno(), libc::ENOSPC);
        assert!(FsError::Closed.is_fault());
        let refused = std::io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(FsError::Device(refused).to_errno(), libc::EIO);
        assert!(!FsError::from(StoreError::Exists).is_fault());
    }
}
