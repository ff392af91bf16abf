//! POSIX ACLs and the xattr namespace rules, as pure logic: the `system.posix_acl_*` value
//! format, validation, the mode an access ACL implies, chmod's rewrite of an ACL, inheritance of
//! a directory's default ACL by new entries, and the setuid/setgid rules that go with them.
//!
//! The kernel (FUSE_POSIX_ACL with default_permissions) enforces ACLs, checks who may set them
//! (owner or CAP_FOWNER) and validates them before they reach the daemon; it leaves to the
//! filesystem what ext4 does in `ext4_set_acl`, `ext4_setattr` and `ext4_init_acl`: the mode an
//! access ACL implies (`posix_acl_update_mode`), chmod of the ACL (`posix_acl_chmod`), and the
//! default ACL's inheritance in place of the umask (`posix_acl_create`). Those live here.

use crate::error::{Error, Result};
use crate::types::{Caller, FileKind};

pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Version word at the start of every ACL xattr value (`POSIX_ACL_XATTR_VERSION`).
const XATTR_VERSION: u32 = 2;
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;
/// The kernel reads ACLs into one page and refuses to set larger ones (`fuse_set_acl`): a
/// larger stored ACL would make every permission check of the file fail.
pub const ACL_XATTR_MAX: usize = 4096;
/// `e_id` of the entries that name no user or group.
const UNDEFINED_ID: u32 = u32::MAX;

const S_ISUID: u16 = 0o4000;
const S_ISGID: u16 = 0o2000;
const S_IXGRP: u16 = 0o0010;

/// The tag of an ACL entry, with its on-disk value (`ACL_USER_OBJ` ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    UserObj = 0x01,
    User = 0x02,
    GroupObj = 0x04,
    Group = 0x08,
    Mask = 0x10,
    Other = 0x20,
}

impl Tag {
    fn from_raw(v: u16) -> Option<Tag> {
        Some(match v {
            0x01 => Tag::UserObj,
            0x02 => Tag::User,
            0x04 => Tag::GroupObj,
            0x08 => Tag::Group,
            0x10 => Tag::Mask,
            0x20 => Tag::Other,
            _ => return None,
        })
    }
}

/// One entry: a tag, rwx bits (4, 2, 1) and, for `User`/`Group`, the uid or gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: Tag,
    pub perm: u16,
    pub id: u32,
}

/// A valid POSIX ACL: entries in the order `posix_acl_valid` demands (owner, named users,
/// owning group, named groups, mask, other).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parse and validate an xattr value, as `posix_acl_from_xattr` + `posix_acl_valid` do.
    /// `Ok(None)`: a header with no entries, which setxattr(2) takes as "remove the ACL".
    pub fn from_xattr(v: &[u8]) -> Result<Option<Acl>> {
        if v.len() > ACL_XATTR_MAX {
            return Err(Error::TooBig);
        }
        let Some((head, body)) = v.split_first_chunk::<HEADER_LEN>() else {
            return Err(Error::Invalid("ACL shorter than its header"));
        };
        if u32::from_le_bytes(*head) != XATTR_VERSION {
            return Err(Error::Unsupported);
        }
        if body.len() % ENTRY_LEN != 0 {
            return Err(Error::Invalid(
                "ACL length is not a whole number of entries",
            ));
        }
        let mut entries = Vec::with_capacity(body.len() / ENTRY_LEN);
        for e in body.chunks_exact(ENTRY_LEN) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let tag = Tag::from_raw(tag).ok_or(Error::Invalid("unknown ACL entry tag"))?;
            let id = if matches!(tag, Tag::User | Tag::Group) {
                id
            } else {
                UNDEFINED_ID
            };
            entries.push(Entry { tag, perm, id });
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let acl = Acl { entries };
        acl.validate()?;
        Ok(Some(acl))
    }

    /// The xattr value (ids of unnamed entries written as `ACL_UNDEFINED_ID`, as the kernel does).
    pub fn to_xattr(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        v.extend_from_slice(&XATTR_VERSION.to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&(e.tag as u16).to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The kernel's `posix_acl_valid`: one owner, owning-group and other entry, named entries
    /// in their place, a mask whenever there is a named entry, rwx bits only.
    fn validate(&self) -> Result<()> {
        #[derive(PartialEq)]
        enum State {
            UserObj,
            User,
            Group,
            Other,
            Done,
        }
        let bad = Error::Invalid("malformed ACL");
        let mut state = State::UserObj;
        let mut needs_mask = false;
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return Err(bad);
            }
            state = match (e.tag, state) {
                (Tag::UserObj, State::UserObj) => State::User,
                (Tag::User, State::User) if e.id != UNDEFINED_ID => {
                    needs_mask = true;
                    State::User
                }
                (Tag::GroupObj, State::User) => State::Group,
                (Tag::Group, State::Group) if e.id != UNDEFINED_ID => {
                    needs_mask = true;
                    State::Group
                }
                (Tag::Mask, State::Group) => State::Other,
                (Tag::Other, State::Other) => State::Done,
                (Tag::Other, State::Group) if !needs_mask => State::Done,
                _ => return Err(bad),
            };
        }
        if state == State::Done {
            Ok(())
        } else {
            Err(bad)
        }
    }

    fn find(&self, tag: Tag) -> Option<usize> {
        self.entries.iter().position(|e| e.tag == tag)
    }

    /// `posix_acl_equiv_mode`: the permission bits this ACL implies for `perm` (whose setuid,
    /// setgid and sticky bits stay), and whether the mode says all the ACL says (then no ACL
    /// needs storing). The group bits are the mask's when there is one.
    pub fn equiv_mode(&self, perm: u16) -> (u16, bool) {
        let mut bits = 0u16;
        let mut equiv = true;
        for e in &self.entries {
            match e.tag {
                Tag::UserObj => bits |= e.perm << 6,
                Tag::GroupObj => bits |= e.perm << 3,
                Tag::Other => bits |= e.perm,
                Tag::Mask => {
                    bits = (bits & !0o070) | (e.perm << 3);
                    equiv = false;
                }
                Tag::User | Tag::Group => equiv = false,
            }
        }
        // The mask follows the owning group in valid ACLs, so the loop above already let it win.
        ((perm & !0o777) | bits, equiv)
    }

    /// `posix_acl_chmod`: after a chmod to `perm`, the owner, mask (or owning group when there
    /// is no mask) and other entries carry the new bits; named entries are untouched.
    pub fn chmod(&mut self, perm: u16) {
        let group = self.find(Tag::Mask).or_else(|| self.find(Tag::GroupObj));
        for (i, e) in self.entries.iter_mut().enumerate() {
            match e.tag {
                Tag::UserObj => e.perm = (perm >> 6) & 7,
                Tag::Other => e.perm = perm & 7,
                _ if Some(i) == group => e.perm = (perm >> 3) & 7,
                _ => {}
            }
        }
    }

    /// `posix_acl_create_masq`: an inherited ACL limited by the mode the creator asked for;
    /// returns the new permission bits (special bits of `perm` kept) and whether the ACL is
    /// then equivalent to them.
    fn create_masq(&mut self, perm: u16) -> (u16, bool) {
        let mut mode = perm;
        let mut equiv = true;
        let group = self.find(Tag::Mask).or_else(|| self.find(Tag::GroupObj));
        for (i, e) in self.entries.iter_mut().enumerate() {
            match e.tag {
                Tag::UserObj => {
                    e.perm &= (mode >> 6) & 7;
                    mode = (mode & !0o700) | (mode & (e.perm << 6));
                }
                Tag::Other => {
                    e.perm &= mode & 7;
                    mode = (mode & !0o007) | (mode & e.perm);
                }
                Tag::User | Tag::Group | Tag::Mask => equiv = false,
                Tag::GroupObj => {}
            }
            if Some(i) == group {
                e.perm &= (mode >> 3) & 7;
                mode = (mode & !0o070) | (mode & (e.perm << 3));
            }
        }
        (mode, equiv)
    }
}

/// What a new inode gets from its directory's default ACL (`posix_acl_create`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inherited {
    /// The permission bits to create the inode with.
    pub perm: u16,
    /// The access ACL to store, if the inherited one says more than `perm`.
    pub access: Option<Acl>,
    /// The default ACL to store (new directories inherit it whole).
    pub default: Option<Acl>,
}

/// The permission bits and ACLs of a new inode of `kind` asked for with `perm` by a process
/// with `umask`, under a directory whose default ACL is `dir_default`. As on ext4: without a
/// default ACL the umask applies; with one, the umask is ignored and the ACL limits the mode;
/// symlinks get neither (mode 0777).
pub fn inherit(dir_default: Option<&Acl>, kind: FileKind, perm: u16, umask: u16) -> Inherited {
    let plain = |perm| Inherited {
        perm,
        access: None,
        default: None,
    };
    if kind == FileKind::Symlink {
        return plain(perm);
    }
    let Some(default) = dir_default else {
        return plain(perm & !(umask & 0o777));
    };
    let mut access = default.clone();
    let (perm, equiv) = access.create_masq(perm);
    Inherited {
        perm,
        access: (!equiv).then_some(access),
        default: (kind == FileKind::Directory).then(|| default.clone()),
    }
}

/// A capability a rule asks about (numbers of `linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Give files away (keep owners in a snapshot).
    Chown = 0,
    /// Bypass read, write and search permission checks.
    DacOverride = 1,
    /// Bypass read and search permission checks.
    DacReadSearch = 2,
    /// Act as the owner of any file (the sticky-bit rule).
    Fowner = 3,
    /// Keep setuid/setgid bits on modification; set setgid outside the file's group.
    Fsetid = 4,
    /// trusted.* attributes, among much else.
    SysAdmin = 21,
    /// Make device nodes.
    Mknod = 27,
}

/// What the store's rules need to know of the process asking: the adapter knows its uid, gid
/// and pid, and finds its supplementary groups and capabilities when a rule asks.
pub trait Cred {
    fn caller(&self) -> Caller;
    /// Whether the process is in group `gid` (primary or supplementary).
    fn in_group(&self, gid: u32) -> bool;
    /// Whether the process has `cap` in its effective set.
    fn capable(&self, cap: Capability) -> bool;
}

/// A bare uid/gid: in the primary group only, and with every capability exactly when root.
/// This is how the store's own tools and tests act.
impl Cred for Caller {
    fn caller(&self) -> Caller {
        *self
    }

    fn in_group(&self, gid: u32) -> bool {
        gid == self.gid
    }

    fn capable(&self, _cap: Capability) -> bool {
        self.uid == 0
    }
}

/// The kernel's `in_group_or_capable` for keeping a setgid bit of a file owned by group `gid`.
fn keeps_setgid(cred: &dyn Cred, gid: u32) -> bool {
    cred.in_group(gid) || cred.capable(Capability::Fsetid)
}

/// The file capabilities xattr (`XATTR_NAME_CAPS`): removed by every change to a file's data,
/// size or owner, whoever makes it (`cap_inode_killpriv`).
pub const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// The permission bits a file keeps when `cred` modifies its data (write, truncate, fallocate,
/// copy_file_range), as `file_remove_privs` leaves them on ext4 (`setattr_should_drop_suidgid`):
/// an unprivileged modifier (no CAP_FSETID) drops setuid, and setgid when the group may execute
/// or the modifier is outside the group.
pub fn modified_perm(perm: u16, gid: u32, cred: &dyn Cred) -> u16 {
    if perm & (S_ISUID | S_ISGID) == 0 || cred.capable(Capability::Fsetid) {
        return perm;
    }
    let mut out = perm & !S_ISUID;
    if perm & S_ISGID != 0 && (perm & S_IXGRP != 0 || !cred.in_group(gid)) {
        out &= !S_ISGID;
    }
    out
}

/// The permission bits a non-directory owned by group `gid` keeps when `cred` changes its owner
/// or group (`chown_common`): setuid goes whoever asks, even with CAP_FSETID; setgid as
/// `setattr_should_drop_sgid` says (when the group may execute, or the caller is neither in the
/// file's group nor privileged).
pub fn chowned_perm(perm: u16, gid: u32, cred: &dyn Cred) -> u16 {
    let mut out = perm & !S_ISUID;
    if perm & S_ISGID != 0 && (perm & S_IXGRP != 0 || !keeps_setgid(cred, gid)) {
        out &= !S_ISGID;
    }
    out
}

/// The permission bits after `cred` sets access ACL `acl` on a file with `perm` owned by group
/// `gid`, and whether the ACL must be stored (`posix_acl_update_mode`): the mode takes the
/// ACL's bits, and setgid is dropped for a setter outside the group.
pub fn perm_after_set(acl: &Acl, perm: u16, gid: u32, cred: &dyn Cred) -> (u16, bool) {
    let (mut mode, equiv) = acl.equiv_mode(perm);
    if !keeps_setgid(cred, gid) {
        mode &= !S_ISGID;
    }
    (mode, !equiv)
}

/// The xattr namespaces, with what the kernel leaves to the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    User,
    /// Readable and listable by CAP_SYS_ADMIN only.
    Trusted,
    Security,
    AclAccess,
    AclDefault,
}

/// The namespace of an attribute name. Other `system.*` names and names without a known
/// prefix are not supported (EOPNOTSUPP), as on ext4.
pub fn namespace(name: &[u8]) -> Result<Namespace> {
    Ok(if name.starts_with(b"user.") {
        Namespace::User
    } else if name.starts_with(b"trusted.") {
        Namespace::Trusted
    } else if name.starts_with(b"security.") {
        Namespace::Security
    } else if name == ACL_ACCESS {
        Namespace::AclAccess
    } else if name == ACL_DEFAULT {
        Namespace::AclDefault
    } else {
        return Err(Error::Unsupported);
    })
}

/// Whether listxattr(2) shows `name` to `cred`: trusted.* only to CAP_SYS_ADMIN, as ext4's
/// `trusted_list` (the kernel passes a FUSE listing through unfiltered).
pub fn listed(name: &[u8], cred: &dyn Cred) -> bool {
    !name.starts_with(b"trusted.") || cred.capable(Capability::SysAdmin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: Tag, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    const U: u32 = UNDEFINED_ID;

    fn acl(entries: &[Entry]) -> Acl {
        Acl {
            entries: entries.to_vec(),
        }
    }

    /// user::rw- user:1000:r-x group::r-- mask::rwx other::---
    fn named() -> Acl {
        acl(&[
            e(Tag::UserObj, 6, U),
            e(Tag::User, 5, 1000),
            e(Tag::GroupObj, 4, U),
            e(Tag::Mask, 7, U),
            e(Tag::Other, 0, U),
        ])
    }

    fn minimal(u: u16, g: u16, o: u16) -> Acl {
        acl(&[
            e(Tag::UserObj, u, U),
            e(Tag::GroupObj, g, U),
            e(Tag::Other, o, U),
        ])
    }

    struct Nobody {
        groups: Vec<u32>,
        fsetid: bool,
    }

    impl Cred for Nobody {
        fn caller(&self) -> Caller {
            Caller {
                uid: 65534,
                gid: 65534,
            }
        }
        fn in_group(&self, gid: u32) -> bool {
            gid == 65534 || self.groups.contains(&gid)
        }
        fn capable(&self, cap: Capability) -> bool {
            self.fsetid && cap == Capability::Fsetid
        }
    }

    fn nobody(groups: &[u32]) -> Nobody {
        Nobody {
            groups: groups.to_vec(),
            fsetid: false,
        }
    }

    #[test]
    fn tags_are_their_on_disk_values() {
        // The numbers are the kernel's ACL_* tags in the xattr format: reordering the enum
        // must not change them.
        let all = [
            (Tag::UserObj, 0x01),
            (Tag::User, 0x02),
            (Tag::GroupObj, 0x04),
            (Tag::Group, 0x08),
            (Tag::Mask, 0x10),
            (Tag::Other, 0x20),
        ];
        for (tag, v) in all {
            assert_eq!(tag as u16, v, "{tag:?}");
            assert_eq!(Tag::from_raw(v), Some(tag));
        }
        assert_eq!(Tag::from_raw(0x40), None);
        assert_eq!(Tag::from_raw(0), None);
    }

    #[test]
    fn xattr_round_trip_and_layout() -> Result<()> {
        let a = named();
        let v = a.to_xattr();
        assert_eq!(v.len(), 4 + 5 * 8);
        assert_eq!(&v[..4], &[2, 0, 0, 0]);
        // user:1000:r-x is the second entry: tag 2, perm 5, id 1000, little-endian.
        assert_eq!(&v[12..20], &[2, 0, 5, 0, 0xe8, 0x03, 0, 0]);
        // Unnamed entries carry ACL_UNDEFINED_ID.
        assert_eq!(&v[8..12], &[0xff; 4]);
        assert_eq!(Acl::from_xattr(&v)?, Some(a));
        // An unnamed entry's id is ignored on input and normalised on output.
        let mut odd = minimal(6, 4, 4).to_xattr();
        odd[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(Acl::from_xattr(&odd)?, Some(minimal(6, 4, 4)));
        assert_eq!(Acl::from_xattr(&[2, 0, 0, 0])?, None, "empty: remove");
        Ok(())
    }

    #[test]
    fn rejects_what_the_kernel_rejects() {
        let ok = named().to_xattr();
        let errno = |v: &[u8]| Acl::from_xattr(v).err().map(|e| e.errno());
        let einval = |v: &[u8]| errno(v) == Some(libc::EINVAL);
        assert!(einval(&[]));
        assert!(einval(&ok[..ok.len() - 1]), "partial entry");
        let mut v1 = ok.clone();
        v1[0] = 1;
        assert_eq!(errno(&v1), Some(libc::EOPNOTSUPP));
        let bad = |entries: &[Entry]| einval(&acl(entries).to_xattr());
        // Missing entries, wrong order, duplicates, bad bits, named entry without mask.
        assert!(bad(&[e(Tag::UserObj, 6, U), e(Tag::Other, 4, U)]));
        assert!(bad(&[
            e(Tag::GroupObj, 4, U),
            e(Tag::UserObj, 6, U),
            e(Tag::Other, 4, U)
        ]));
        assert!(bad(&[
            e(Tag::UserObj, 6, U),
            e(Tag::UserObj, 6, U),
            e(Tag::GroupObj, 4, U),
            e(Tag::Other, 4, U)
        ]));
        assert!(bad(&[
            e(Tag::UserObj, 8, U),
            e(Tag::GroupObj, 4, U),
            e(Tag::Other, 4, U)
        ]));
        assert!(bad(&[
            e(Tag::UserObj, 6, U),
            e(Tag::User, 4, 5),
            e(Tag::GroupObj, 4, U),
            e(Tag::Other, 4, U)
        ]));
        assert!(bad(&[
            e(Tag::UserObj, 6, U),
            e(Tag::GroupObj, 4, U),
            e(Tag::Mask, 4, U),
            e(Tag::Mask, 4, U),
            e(Tag::Other, 4, U)
        ]));
        assert!(bad(&[
            e(Tag::UserObj, 6, U),
            e(Tag::User, 4, u32::MAX),
            e(Tag::GroupObj, 4, U),
            e(Tag::Mask, 4, U),
            e(Tag::Other, 4, U)
        ]));
        let mut unknown = ok.clone();
        unknown[4] = 0x40;
        assert!(einval(&unknown));
        // A mask without named entries is valid (setfacl -m m::r writes one).
        assert!(Acl::from_xattr(
            &acl(&[
                e(Tag::UserObj, 6, U),
                e(Tag::GroupObj, 4, U),
                e(Tag::Mask, 4, U),
                e(Tag::Other, 4, U)
            ])
            .to_xattr()
        )
        .is_ok());
        let huge = vec![0u8; ACL_XATTR_MAX + 1];
        assert_eq!(errno(&huge), Some(libc::E2BIG));
    }

    #[test]
    fn equivalent_mode() {
        assert_eq!(minimal(7, 5, 0).equiv_mode(0o4000), (0o4750, true));
        // With a mask, the group bits are the mask's and the ACL must be kept.
        assert_eq!(named().equiv_mode(0o644), (0o670, false));
    }

    #[test]
    fn chmod_rewrites_owner_mask_other() {
        let mut a = named();
        a.chmod(0o2750);
        assert_eq!(
            a.entries(),
            &[
                e(Tag::UserObj, 7, U),
                e(Tag::User, 5, 1000),
                e(Tag::GroupObj, 4, U),
                e(Tag::Mask, 5, U),
                e(Tag::Other, 0, U),
            ]
        );
        let mut m = minimal(6, 4, 4);
        m.chmod(0o751);
        assert_eq!(m, minimal(7, 5, 1));
    }

    #[test]
    fn inheritance_replaces_the_umask() {
        // No default ACL: the umask applies.
        let p = inherit(None, FileKind::Regular, 0o666, 0o022);
        assert_eq!(
            (p.perm, p.access.is_none(), p.default.is_none()),
            (0o644, true, true)
        );
        // A default ACL: the umask is ignored, the ACL limits the mode.
        let d = named();
        let f = inherit(Some(&d), FileKind::Regular, 0o666, 0o077);
        assert_eq!(f.perm, 0o660, "owner rw-, mask rwx&rw-, other ---");
        let access = f.access.as_ref().map(|a| a.entries().to_vec());
        assert_eq!(
            access,
            Some(vec![
                e(Tag::UserObj, 6, U),
                e(Tag::User, 5, 1000),
                e(Tag::GroupObj, 4, U),
                e(Tag::Mask, 6, U),
                e(Tag::Other, 0, U),
            ])
        );
        assert_eq!(f.default, None, "files get no default ACL");
        // Directories keep the default ACL whole and get the access ACL too.
        let sub = inherit(Some(&d), FileKind::Directory, 0o2777, 0o077);
        assert_eq!(sub.perm, 0o2670);
        assert_eq!(sub.default.as_ref(), Some(&d));
        // A minimal default ACL gives only a mode.
        let m = inherit(Some(&minimal(7, 5, 5)), FileKind::Regular, 0o666, 0o077);
        assert_eq!((m.perm, m.access), (0o644, None));
        // Symlinks: neither umask nor ACL.
        let l = inherit(Some(&d), FileKind::Symlink, 0o777, 0o077);
        assert_eq!((l.perm, l.access, l.default), (0o777, None, None));
    }

    #[test]
    fn setgid_and_setuid_rules() {
        let out = nobody(&[]);
        let member = nobody(&[100]);
        // fallocate: setuid always goes; setgid when group-executable or outside the group.
        assert_eq!(modified_perm(0o6666, 100, &out), 0o0666);
        assert_eq!(modified_perm(0o6666, 100, &member), 0o2666);
        assert_eq!(modified_perm(0o6676, 100, &member), 0o0676);
        assert_eq!(modified_perm(0o6666, 100, &Caller::ROOT), 0o6666);
        let fsetid = Nobody {
            groups: vec![],
            fsetid: true,
        };
        assert_eq!(modified_perm(0o6666, 100, &fsetid), 0o6666);
        assert_eq!(modified_perm(0o0755, 100, &out), 0o0755);
        // chown: setuid goes even for CAP_FSETID; setgid as for a modification, but the
        // privileged keep a setgid that is not group-executable.
        assert_eq!(chowned_perm(0o6555, 100, &Caller::ROOT), 0o0555);
        assert_eq!(chowned_perm(0o6444, 100, &Caller::ROOT), 0o2444);
        assert_eq!(chowned_perm(0o6444, 100, &fsetid), 0o2444);
        assert_eq!(chowned_perm(0o6444, 100, &member), 0o2444);
        assert_eq!(chowned_perm(0o6444, 100, &out), 0o0444);
        assert_eq!(chowned_perm(0o0755, 100, &out), 0o0755);
        // Setting an access ACL: the mode follows it; setgid goes for a setter outside.
        let a = named();
        assert_eq!(perm_after_set(&a, 0o2644, 100, &out), (0o0670, true));
        assert_eq!(perm_after_set(&a, 0o2644, 100, &member), (0o2670, true));
        assert_eq!(
            perm_after_set(&minimal(6, 4, 0), 0o2777, 100, &member),
            (0o2640, false)
        );
    }

    #[test]
    fn namespaces_and_listing() {
        assert_eq!(namespace(b"user.a").ok(), Some(Namespace::User));
        assert_eq!(namespace(b"trusted.a").ok(), Some(Namespace::Trusted));
        assert_eq!(
            namespace(b"security.selinux").ok(),
            Some(Namespace::Security)
        );
        assert_eq!(namespace(ACL_ACCESS).ok(), Some(Namespace::AclAccess));
        assert_eq!(namespace(ACL_DEFAULT).ok(), Some(Namespace::AclDefault));
        for n in [
            &b"system.foo"[..],
            b"system.posix_acl_accessx",
            b"plain",
            b"user",
        ] {
            assert!(matches!(namespace(n), Err(Error::Unsupported)), "{n:?}");
        }
        assert!(listed(b"trusted.a", &Caller::ROOT));
        assert!(!listed(b"trusted.a", &nobody(&[])));
        assert!(listed(b"user.a", &nobody(&[])));
        assert!(listed(ACL_ACCESS, &nobody(&[])));
    }
}
