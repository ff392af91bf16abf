//! Extended attributes: get, set, list and remove, and the size protocol of getxattr(2) and
//! listxattr(2): a request of size 0 asks how big the answer is; a buffer too small for it
//! gets ERANGE.

use super::filesystem::Core;
use crate::error::FsError;
use crate::stats::Counters;
use cowstore::acl::Cred;
use cowstore::InodeNo;

/// The answer to getxattr or listxattr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// A size probe (request size 0): how many bytes the answer has.
    Size(u32),
    /// The answer, within the size asked for.
    Data(Vec<u8>),
}

impl XattrReply {
    /// The reply to a request of `size` bytes whose answer is `value`: its length for a probe
    /// (size 0; E2BIG if a u32 cannot say it), ERANGE if it does not fit, else the bytes.
    pub fn sized(size: u32, value: Vec<u8>) -> Result<XattrReply, FsError> {
        if size == 0 {
            return u32::try_from(value.len())
                .map(XattrReply::Size)
                .map_err(|_| FsError::refused(libc::E2BIG, "xattr: answer too large"));
        }
        if value.len() > size as usize {
            return Err(FsError::refused(libc::ERANGE, "xattr: buffer too small"));
        }
        Ok(XattrReply::Data(value))
    }
}

/// The listxattr(2) encoding: each name followed by a NUL.
pub fn encode_names(names: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for n in names {
        out.extend_from_slice(n);
        out.push(0);
    }
    out
}

impl Core {
    /// `position` is macOS-only (resource forks): EINVAL unless 0.
    pub fn setxattr(
        &self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        flags: i32,
        position: u32,
        cred: &dyn Cred,
    ) -> Result<(), FsError> {
        if position != 0 {
            return Err(FsError::refused(
                libc::EINVAL,
                "setxattr: position is macOS-only",
            ));
        }
        Ok(self.store()?.setxattr_as(ino, name, value, flags, cred)?)
    }

    pub fn getxattr(&self, ino: InodeNo, name: &[u8], size: u32) -> Result<XattrReply, FsError> {
        Counters::add(&self.counters.getxattrs, 1);
        XattrReply::sized(size, self.store()?.getxattr(ino, name)?)
    }

    /// The names `cred` may see (trusted.* only with CAP_SYS_ADMIN), NUL-terminated.
    pub fn listxattr(
        &self,
        ino: InodeNo,
        size: u32,
        cred: &dyn Cred,
    ) -> Result<XattrReply, FsError> {
        let names = self.store()?.listxattr_as(ino, cred)?;
        XattrReply::sized(size, encode_names(&names))
    }

    pub fn removexattr(&self, ino: InodeNo, name: &[u8]) -> Result<(), FsError> {
        Ok(self.store()?.removexattr(ino, name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;
    use crate::core::FsConfig;
    use crate::error::ToErrno;
    use cowstore::Caller;

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    fn errno(r: Result<XattrReply, FsError>) -> i32 {
        r.expect_err("refused").to_errno()
    }

    #[test]
    fn names_are_nul_terminated_one_after_another() {
        let names = [b"user.a".to_vec(), b"security.selinux".to_vec()];
        assert_eq!(encode_names(&names), b"user.a\0security.selinux\0".to_vec());
        assert_eq!(encode_names(&[]), Vec::<u8>::new());
    }

    #[test]
    fn a_probe_gets_the_size_and_a_short_buffer_erange() {
        let v = b"user.a\0".to_vec();
        assert_eq!(
            XattrReply::sized(0, v.clone()).ok(),
            Some(XattrReply::Size(7))
        );
        assert_eq!(errno(XattrReply::sized(6, v.clone())), libc::ERANGE);
        assert_eq!(
            XattrReply::sized(7, v.clone()).ok(),
            Some(XattrReply::Data(v.clone()))
        );
        assert_eq!(
            XattrReply::sized(4096, v.clone()).ok(),
            Some(XattrReply::Data(v))
        );
        assert_eq!(
            XattrReply::sized(0, Vec::new()).ok(),
            Some(XattrReply::Size(0))
        );
    }

    #[test]
    fn xattrs_round_trip_through_the_core_with_sizes() {
        let f = fixture(FsConfig::default());
        let c = &f.core;
        let root = InodeNo::ROOT;
        c.setxattr(root, b"user.color", b"blue", 0, 0, &ROOT)
            .expect("set");
        c.setxattr(root, b"user.size", b"xl", 0, 0, &ROOT)
            .expect("set");
        let e = c.setxattr(root, b"user.x", b"v", 0, 1, &ROOT);
        assert_eq!(e.expect_err("position").to_errno(), libc::EINVAL);
        assert_eq!(
            c.getxattr(root, b"user.color", 0).ok(),
            Some(XattrReply::Size(4))
        );
        assert_eq!(errno(c.getxattr(root, b"user.color", 3)), libc::ERANGE);
        assert_eq!(
            c.getxattr(root, b"user.color", 4).ok(),
            Some(XattrReply::Data(b"blue".to_vec()))
        );
        assert_eq!(errno(c.getxattr(root, b"user.none", 10)), libc::ENODATA);
        let list = b"user.color\0user.size\0".to_vec();
        let n = list.len() as u32;
        assert_eq!(c.listxattr(root, 0, &ROOT).ok(), Some(XattrReply::Size(n)));
        assert_eq!(errno(c.listxattr(root, n - 1, &ROOT)), libc::ERANGE);
        assert_eq!(
            c.listxattr(root, n, &ROOT).ok(),
            Some(XattrReply::Data(list))
        );
        c.removexattr(root, b"user.size").expect("remove");
        assert_eq!(
            c.listxattr(root, 100, &ROOT).ok(),
            Some(XattrReply::Data(b"user.color\0".to_vec()))
        );
    }
}
