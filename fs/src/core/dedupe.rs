//! `cowfs dedupe`: the ioctl that asks the daemon to dedupe one open file against the blocks
//! its session has seen (see `cowstore::Store::dedupe_file` and docs/design.md, "Dedupe").
//!
//! FIDEDUPERANGE never reaches a FUSE daemon (the VFS does it with `remap_file_range`, which
//! FUSE lacks), so this is our own: `COWFS_IOC_DEDUPE = _IOWR('C', 0x41, struct
//! cowfs_dedupe)`, 64 bytes, which FUSE forwards as a restricted ioctl (the argument's size
//! comes from the command) with the caller's uid and gid:
//!
//! ```text
//! offset  size  field
//!      0     8  session   in: the caller's session id (non-zero; the tool picks it at random)
//!      8     4  flags     in: 1 = INDEX_ONLY (remember the file's blocks, replace none),
//!                             2 = END (commit, then forget the session; the fd is not read)
//!     12     4  reserved  must be 0
//!     16     8  examined  out: bytes read and hashed
//!     24     8  deduped   out: bytes now shared with an identical earlier block
//!     32     8  freed     out: pool bytes given back
//!     40    24  reserved  must be 0
//! ```
//!
//! Sessions are keyed by (store, caller uid, session id), so one user's session never sees
//! another's blocks; at most [`MAX_SESSIONS`] live at once (a new one evicts the one idle the
//! longest) and one idle for [`SESSION_IDLE`] is dropped, so a tool that dies without END
//! frees its memory later.

use super::filesystem::Core;
use crate::error::FsError;
use cowstore::acl::Cred;
use cowstore::{DedupeIndex, InodeNo};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// `_IOWR('C', 0x41, 64 bytes)`.
pub const COWFS_IOC_DEDUPE: u32 = (3 << 30) | (ARG_LEN as u32) << 16 | (b'C' as u32) << 8 | 0x41;
pub const ARG_LEN: usize = 64;
pub const FLAG_INDEX_ONLY: u32 = 1;
pub const FLAG_END: u32 = 2;

pub const MAX_SESSIONS: usize = 8;
pub const SESSION_IDLE: Duration = Duration::from_secs(600);

type Key = (usize, u32, u64);

struct Session {
    index: Arc<Mutex<DedupeIndex>>,
    used: Instant,
}

/// Every live session of every store this process serves (the key names the store).
static SESSIONS: LazyLock<Mutex<HashMap<Key, Session>>> = LazyLock::new(Default::default);

/// The session's index, made if new (evicting the idlest beyond the bound).
fn session(key: Key) -> Arc<Mutex<DedupeIndex>> {
    let mut all = SESSIONS.lock();
    let now = Instant::now();
    all.retain(|_, s| now.duration_since(s.used) < SESSION_IDLE);
    if !all.contains_key(&key) && all.len() >= MAX_SESSIONS {
        if let Some(oldest) = all.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k) {
            all.remove(&oldest);
        }
    }
    let s = all.entry(key).or_insert_with(|| Session {
        index: Arc::default(),
        used: now,
    });
    s.used = now;
    s.index.clone()
}

fn field(arg: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&arg[at..at + 8]);
    u64::from_ne_bytes(b)
}

impl Core {
    /// COWFS_IOC_DEDUPE on `ino` by `caller`; answers the 64-byte argument with the counts.
    pub fn dedupe_ioctl(
        &self,
        ino: InodeNo,
        in_data: &[u8],
        cred: &dyn Cred,
    ) -> Result<Vec<u8>, FsError> {
        let caller = cred.caller();
        let s = self.store()?;
        let bad = |why| FsError::refused(libc::EINVAL, why);
        let arg = in_data
            .get(..ARG_LEN)
            .ok_or(bad("dedupe: short argument"))?;
        let session_id = field(arg, 0);
        let flags = field(arg, 8);
        let reserved_zero = arg[40..].iter().all(|&b| b == 0);
        if session_id == 0 || flags & !u64::from(FLAG_INDEX_ONLY | FLAG_END) != 0 || !reserved_zero
        {
            return Err(bad("dedupe: bad session, flags or reserved fields"));
        }
        let key = (s as *const _ as usize, caller.uid, session_id);
        let mut out = vec![0u8; ARG_LEN];
        out[..16].copy_from_slice(&arg[..16]);
        if flags & u64::from(FLAG_END) != 0 {
            SESSIONS.lock().remove(&key);
            // The result is durable when the command returns.
            s.commit()?;
            return Ok(out);
        }
        let index = session(key);
        let replace = flags & u64::from(FLAG_INDEX_ONLY) == 0;
        let st = s.dedupe_file(&mut index.lock(), ino, replace, cred)?;
        for (at, v) in [(16, st.examined), (24, st.deduped), (32, st.freed)] {
            out[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;
    use crate::core::FsConfig;
    use crate::error::ToErrno;
    use cowstore::Caller;
    use cowstore::NewInode;

    fn arg(session: u64, flags: u32) -> Vec<u8> {
        let mut a = vec![0u8; ARG_LEN];
        a[..8].copy_from_slice(&session.to_ne_bytes());
        a[8..12].copy_from_slice(&flags.to_ne_bytes());
        a
    }

    #[test]
    fn the_command_is_iowr_c_0x41_of_64_bytes() {
        assert_eq!(COWFS_IOC_DEDUPE, 0xc040_4341);
    }

    #[test]
    fn two_files_of_a_session_share_blocks_and_end_commits() {
        let f = fixture(FsConfig::default());
        let s = f.core.store().expect("store");
        let data = vec![7u8; 1 << 16];
        let mut inos = Vec::new();
        for name in [&b"a"[..], b"b"] {
            let ino = s
                .create(InodeNo::ROOT, name, &NewInode::regular(0o644), Caller::ROOT)
                .expect("create")
                .ino;
            s.write(ino, 0, &data).expect("write");
            inos.push(ino);
        }
        let root = Caller::ROOT;
        let r = f.core.dedupe_ioctl(inos[0], &arg(42, 0), &root).expect("a");
        assert_eq!(field(&r, 16), 1 << 16);
        let r = f.core.dedupe_ioctl(inos[1], &arg(42, 0), &root).expect("b");
        assert_eq!(field(&r, 24), 1 << 16, "b shares all of a's blocks");
        // Another session (or user) has seen nothing.
        let other = Caller { uid: 5, gid: 5 };
        let r = f
            .core
            .dedupe_ioctl(inos[1], &arg(42, FLAG_INDEX_ONLY), &other)
            .expect("other");
        assert_eq!(field(&r, 24), 0);
        let commits = s.commit_count();
        f.core
            .dedupe_ioctl(InodeNo::ROOT, &arg(42, FLAG_END), &root)
            .expect("end");
        assert!(s.commit_count() > commits, "END commits");
        assert!(!SESSIONS.lock().keys().any(|k| k.1 == 0 && k.2 == 42));
        let bad = f.core.dedupe_ioctl(inos[0], &arg(0, 0), &root);
        assert_eq!(bad.expect_err("session 0").to_errno(), libc::EINVAL);
        let denied = f.core.dedupe_ioctl(inos[0], &arg(43, 0), &other);
        assert_eq!(denied.expect_err("not writable").to_errno(), libc::EACCES);
    }
}
