//! Errors of the store: filesystem-level refusals, corruption (kept distinct from I/O), and I/O.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("no such attribute")]
    NoAttr,
    #[error("result too large for the buffer")]
    Range,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    Denied,
    #[error("argument too large")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("file too large")]
    FileTooBig,
    #[error("no space left on device")]
    NoSpace,
    #[error("operation not supported")]
    Unsupported,
    #[error("read-only store")]
    ReadOnly,
    #[error("no data at or after the offset")]
    NoData,
    #[error("store {path} is in use{}", holder.map(|p| format!(" by process {p}")).unwrap_or_default())]
    InUse { path: PathBuf, holder: Option<u32> },
    #[error("not a cowfs store: {path}: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    /// The store's directory or one of its files is not safe to use: a symlink, owned by
    /// another user, writable by others, not a regular file.
    #[error("refusing store {path}: {reason}")]
    UnsafeStore { path: PathBuf, reason: String },
    #[error("unsupported store format: {file} at offset {offset}: {reason}")]
    UnsupportedFormat {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("the store sits over lower directory {recorded}; refusing a different one ({given})")]
    LowerMismatch { recorded: PathBuf, given: PathBuf },
    #[error("corrupt store: {0}")]
    Corrupted(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// A fault of the store or the host (I/O, damage) rather than a refusal of the request.
    pub fn is_fault(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Corrupted(_))
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupted(what.into())
    }

    /// The POSIX errno that best describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::Invalid(_) => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::NoAttr => libc::ENODATA,
            Error::Range => libc::ERANGE,
            Error::NotPermitted => libc::EPERM,
            Error::Denied => libc::EACCES,
            Error::TooBig => libc::E2BIG,
            Error::TooManyLinks => libc::EMLINK,
            Error::FileTooBig => libc::EFBIG,
            Error::NoSpace => libc::ENOSPC,
            Error::Unsupported => libc::EOPNOTSUPP,
            Error::ReadOnly => libc::EROFS,
            Error::NoData => libc::ENXIO,
            Error::InUse { .. } => libc::EBUSY,
            Error::LowerMismatch { .. } => libc::EINVAL,
            Error::NotAStore { .. }
            | Error::UnsafeStore { .. }
            | Error::UnsupportedFormat { .. }
            | Error::Corrupted(_) => libc::EIO,
            Error::Io(e) => os_errno(e).unwrap_or(libc::EIO),
        }
    }

    /// Map an I/O error, keeping ENOSPC/EDQUOT recognisable as "no space".
    pub(crate) fn from_io(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace,
            _ => Error::Io(e),
        }
    }
}

/// The errno of an I/O error, also when it wraps one with a message (a path) around it.
fn os_errno(e: &io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
    while let Some(c) = cur {
        if let Some(n) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                redb_error(redb::Error::from(e))
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Error {
        redb_error(e)
    }
}

fn redb_error(e: redb::Error) -> Error {
    match e {
        redb::Error::Io(io) => Error::from_io(io),
        redb::Error::Corrupted(msg) => Error::Corrupted(format!("meta.redb: {msg}")),
        redb::Error::UpgradeRequired(v) => Error::UnsupportedFormat {
            file: "meta.redb".into(),
            offset: 0,
            reason: format!("B-tree file format version {v} needs an upgrade"),
        },
        redb::Error::ValueTooLarge(_) => Error::FileTooBig,
        other => Error::Corrupted(format!("meta.redb: {other}")),
    }
}
