//! Domain newtypes and the attribute structures the store hands to its callers.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// An inode number. `InodeNo::ROOT` is the root directory (1, as FUSE expects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(transparent)]
pub struct InodeNo(pub u64);

impl InodeNo {
    pub const ROOT: InodeNo = InodeNo(1);

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for InodeNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inode {}", self.0)
    }
}

/// A block number in the pool file (block `b` lives at byte `b * block_size`). Adding a count
/// of blocks gives a block number; the difference of two block numbers is a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(transparent)]
pub struct BlockNo(pub u64);

impl BlockNo {
    pub const ZERO: BlockNo = BlockNo(0);

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The byte of the pool file where this block starts, for blocks of `bs` bytes.
    pub const fn pos(self, bs: u64) -> u64 {
        self.0 * bs
    }

    pub fn checked_add(self, n: u64) -> Option<BlockNo> {
        self.0.checked_add(n).map(BlockNo)
    }

    pub fn saturating_add(self, n: u64) -> BlockNo {
        BlockNo(self.0.saturating_add(n))
    }

    pub fn saturating_sub(self, n: u64) -> BlockNo {
        BlockNo(self.0.saturating_sub(n))
    }
}

impl std::fmt::Display for BlockNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::ops::Add<u64> for BlockNo {
    type Output = BlockNo;
    fn add(self, n: u64) -> BlockNo {
        BlockNo(self.0 + n)
    }
}

impl std::ops::AddAssign<u64> for BlockNo {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

impl std::ops::Sub<u64> for BlockNo {
    type Output = BlockNo;
    fn sub(self, n: u64) -> BlockNo {
        BlockNo(self.0 - n)
    }
}

/// The number of blocks from `other` up to `self`.
impl std::ops::Sub<BlockNo> for BlockNo {
    type Output = u64;
    fn sub(self, other: BlockNo) -> u64 {
        self.0 - other.0
    }
}

/// `len` consecutive pool blocks from `start`: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRun {
    pub start: BlockNo,
    pub len: u64,
}

impl BlockRun {
    pub const fn new(start: BlockNo, len: u64) -> BlockRun {
        BlockRun { start, len }
    }

    /// The run `[start, end)`.
    pub fn between(start: BlockNo, end: BlockNo) -> BlockRun {
        BlockRun::new(start, end - start)
    }

    /// The first block after the run.
    pub fn end(self) -> BlockNo {
        self.start + self.len
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    pub fn contains(self, b: BlockNo) -> bool {
        self.start <= b && b < self.end()
    }

    /// Whether the two runs share a block.
    pub fn overlaps(self, other: BlockRun) -> bool {
        self.start < other.end() && other.start < self.end()
    }

    /// Every block of the run, in order.
    pub fn blocks(self) -> impl Iterator<Item = BlockNo> {
        (self.start.0..self.end().0).map(BlockNo)
    }
}

impl std::fmt::Display for BlockRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end())
    }
}

/// What an inode is. On disk (inode and dirent records) as one byte, the discriminant: the
/// numbers are part of the format, so reordering the variants cannot change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    Regular = 0,
    Directory = 1,
    Symlink = 2,
    Fifo = 3,
    Socket = 4,
    CharDevice = 5,
    BlockDevice = 6,
}

impl TryFrom<u8> for FileKind {
    type Error = u8;

    fn try_from(v: u8) -> Result<FileKind, u8> {
        Ok(match v {
            0 => FileKind::Regular,
            1 => FileKind::Directory,
            2 => FileKind::Symlink,
            3 => FileKind::Fifo,
            4 => FileKind::Socket,
            5 => FileKind::CharDevice,
            6 => FileKind::BlockDevice,
            other => return Err(other),
        })
    }
}

// By discriminant, as one byte: the same bytes postcard wrote for the derived encoding of
// format 1 (its variant index is a varint, one byte below 128), now fixed by the numbers above.
impl Serialize for FileKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for FileKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FileKind, D::Error> {
        let v = u8::deserialize(d)?;
        FileKind::try_from(v)
            .map_err(|v| serde::de::Error::custom(format!("unknown file kind {v}")))
    }
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds, as stored on disk.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    /// Now, by the clock the kernel stamps inode times with: `current_time()` reads the coarse
    /// real-time clock (the time of the last tick, a few ms behind). Under FUSE's writeback
    /// cache the kernel stamps a regular file's mtime and ctime itself, so the store's stamps
    /// must not run ahead of that clock: with a precise one, a file created by the store got an
    /// atime up to a tick after the mtime the kernel gave the write that followed, and relatime
    /// never saw that write (a read after a write within a tick, likewise).
    pub fn now() -> Timespec {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        Timespec {
            sec: t.tv_sec,
            nsec: u32::try_from(t.tv_nsec).unwrap_or(0),
        }
    }
}

impl From<SystemTime> for Timespec {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timespec {
                        sec: -(d.as_secs() as i64),
                        nsec: 0,
                    }
                } else {
                    Timespec {
                        sec: -(d.as_secs() as i64) - 1,
                        nsec: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timespec> for SystemTime {
    fn from(t: Timespec) -> Self {
        let nanos = std::time::Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
        if t.sec >= 0 {
            UNIX_EPOCH + std::time::Duration::from_secs(t.sec as u64) + nanos
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(t.sec.unsigned_abs()) + nanos
        }
    }
}

/// The attributes of an inode, as `stat` would show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeAttr {
    pub ino: InodeNo,
    pub kind: FileKind,
    /// Permission bits, including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Bytes of pool space this file references (shared blocks counted in full).
    pub allocated: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub rdev: u32,
    pub generation: u64,
    pub block_size: u32,
    /// The `chattr` flags.
    pub flags: InodeFlags,
}

impl InodeAttr {
    /// `st_mode`: kind bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }
}

/// The `chattr`/`lsattr` flags of an inode: the `FS_*_FL` bits of `FS_IOC_GETFLAGS` and
/// `FS_IOC_SETFLAGS` (their values are the kernel's ABI). The store enforces immutable and
/// append-only itself: FUSE does not tell the kernel about them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeFlags(pub u32);

impl InodeFlags {
    /// `FS_IMMUTABLE_FL`: no change at all (data, attributes, links, name), not even by root;
    /// only root may clear it.
    pub const IMMUTABLE: InodeFlags = InodeFlags(0x10);
    /// `FS_APPEND_FL`: data may only be added at the end; no truncate, unlink, rename or link.
    pub const APPEND: InodeFlags = InodeFlags(0x20);
    /// `FS_NODUMP_FL`: skipped by dump(8); recorded only.
    pub const NODUMP: InodeFlags = InodeFlags(0x40);
    /// `FS_NOATIME_FL`: reads do not update the access time.
    pub const NOATIME: InodeFlags = InodeFlags(0x80);
    /// Not a `chattr` flag: the inode belongs to a read-only snapshot, and every change to it
    /// fails with EROFS (bit 31, `FS_RESERVED_FL`, which no filesystem hands out; never shown
    /// by FS_IOC_GETFLAGS nor accepted by SETFLAGS).
    pub const READONLY: InodeFlags = InodeFlags(0x8000_0000);
    pub const NONE: InodeFlags = InodeFlags(0);
    /// Every flag the store keeps; `set_flags` refuses others.
    pub const SUPPORTED: InodeFlags = InodeFlags(0x10 | 0x20 | 0x40 | 0x80);
    /// Flags a new inode takes from its directory (ext4 inherits these too).
    pub const INHERITED: InodeFlags = InodeFlags(0x40 | 0x80);
    /// The flags only root (`CAP_LINUX_IMMUTABLE`) may set or clear.
    pub const PRIVILEGED: InodeFlags = InodeFlags(0x10 | 0x20);

    pub fn contains(self, other: InodeFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: InodeFlags) -> bool {
        self.0 & other.0 != 0
    }
}

/// When reads and directory listings update the access time (the mount's `relatime` (default),
/// `strictatime`, `noatime` and `nodiratime`). FUSE leaves atime to the daemon: the kernel
/// marks every FUSE inode `S_NOATIME`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtimePolicy {
    pub mode: AtimeMode,
    /// Never for directories.
    pub nodiratime: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// Only when the access time is not after the last change (mtime or ctime), or is a day old.
    #[default]
    Relatime,
    /// On every access.
    Strict,
    /// Never.
    Never,
}

impl AtimePolicy {
    /// relatime's "a day old": an access time older than this is refreshed by the next access.
    pub const RELATIME_MAX_AGE_SECS: i64 = 24 * 60 * 60;

    /// Whether an access at `now` updates the access time of `a` (the kernel's
    /// `relatime_need_update` and `touch_atime` rules, plus the inode's `noatime` flag).
    pub fn due(&self, a: &InodeAttr, now: Timespec) -> bool {
        self.due_for(a.kind, a.flags, a.atime, a.mtime, a.ctime, now)
    }

    pub(crate) fn due_for(
        &self,
        kind: FileKind,
        flags: InodeFlags,
        atime: Timespec,
        mtime: Timespec,
        ctime: Timespec,
        now: Timespec,
    ) -> bool {
        if flags.contains(InodeFlags::NOATIME)
            || flags.contains(InodeFlags::READONLY)
            || (self.nodiratime && kind == FileKind::Directory)
        {
            return false;
        }
        match self.mode {
            AtimeMode::Never => false,
            AtimeMode::Strict => atime != now,
            AtimeMode::Relatime => {
                mtime >= atime
                    || ctime >= atime
                    || now.sec.saturating_sub(atime.sec) >= Self::RELATIME_MAX_AGE_SECS
            }
        }
    }
}

/// A time to set: an explicit one or "now" (`UTIME_NOW`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// A `setattr` request; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`mode & 0o7777`); the kind bits are ignored.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timespec>,
}

/// The caller's identity, used for ownership of new inodes and setgid inheritance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// A new inode to create under a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInode {
    pub kind: FileKind,
    /// Permission bits (already masked by the umask).
    pub perm: u32,
    pub rdev: u32,
    /// The symlink target, for `FileKind::Symlink`.
    pub symlink_target: Option<Vec<u8>>,
}

impl NewInode {
    /// An inode of `kind` (not a symlink, which needs its target) with permission bits `perm`.
    pub fn new(kind: FileKind, perm: u32, rdev: u32) -> NewInode {
        NewInode {
            kind,
            perm,
            rdev,
            symlink_target: None,
        }
    }

    /// A regular file with permission bits `perm`.
    pub fn regular(perm: u32) -> NewInode {
        NewInode::new(FileKind::Regular, perm, 0)
    }
}

/// Flags of `rename(2)`/`renameat2(2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// One directory entry, with the cookie to resume listing after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeNo,
    pub kind: FileKind,
    /// Pass this back as `offset` to continue after this entry.
    pub cookie: u64,
}

/// Where the bytes of a piece of a file are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `len` bytes at byte `pos` of the pool file.
    Pool { pos: u64, len: u64 },
    /// `len` bytes of zeros (a hole, or unwritten space).
    Hole { len: u64 },
    /// `len` bytes at byte `pos` of lower file `file` (overlay; see `PinnedRead::lower_file`).
    Lower { file: u64, pos: u64, len: u64 },
}

impl Segment {
    pub fn len(&self) -> u64 {
        match *self {
            Segment::Pool { len, .. } | Segment::Hole { len } | Segment::Lower { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `fallocate(2)` modes that the store implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallocMode {
    /// Allocate blocks for holes in the range (mode 0).
    Allocate { keep_size: bool },
    /// Deallocate the range; reads return zeros. The size never changes.
    PunchHole,
    /// Make the range read as zeros.
    ZeroRange { keep_size: bool },
}

/// `lseek(2)` for sparse files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekWhence {
    Data,
    Hole,
}

/// `statfs(2)` figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub total_blocks: u64,
    pub free_blocks: u64,
    pub avail_blocks: u64,
    pub files: u64,
    pub free_files: u64,
    pub name_max: u32,
}

/// Space accounting of the whole store, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceStats {
    pub block_size: u64,
    /// Pool blocks in use by at least one file.
    pub referenced_bytes: u64,
    /// Pool blocks used by exactly one reference.
    pub exclusive_bytes: u64,
    /// Pool blocks used by more than one reference (each counted once).
    pub shared_bytes: u64,
    /// Sum of file extents: what the files would take without sharing.
    pub logical_bytes: u64,
    /// Blocks below the pool's high-water mark that are free.
    pub free_bytes: u64,
    /// Size of the pool's address space (high-water mark).
    pub pool_bytes: u64,
    pub inodes: u64,
    /// Generation (commit counter) of the last commit.
    pub generation: u64,
}

#[cfg(test)]
mod file_kind_tests {
    use super::FileKind;

    #[test]
    fn file_kinds_are_their_discriminant_on_disk() {
        let all = [
            FileKind::Regular,
            FileKind::Directory,
            FileKind::Symlink,
            FileKind::Fifo,
            FileKind::Socket,
            FileKind::CharDevice,
            FileKind::BlockDevice,
        ];
        for (i, k) in all.into_iter().enumerate() {
            let bytes = postcard::to_stdvec(&k).unwrap_or_default();
            assert_eq!(bytes, vec![i as u8], "{k:?}");
            assert_eq!(postcard::from_bytes::<FileKind>(&bytes).ok(), Some(k));
        }
        assert!(postcard::from_bytes::<FileKind>(&[7]).is_err());
    }
}
