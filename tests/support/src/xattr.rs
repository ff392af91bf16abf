//! Extended attributes of host paths (symlinks followed), shaped like the syscalls so that tests
//! can probe their edge cases: a buffer of length 0 asks for the size, a short one gets ERANGE.

use rustix::fs::XattrFlags;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// setxattr(2); `flags` is 0, `XATTR_CREATE` or `XATTR_REPLACE` (any other bits are passed on).
pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let flags = XattrFlags::from_bits_retain(flags as u32);
    Ok(rustix::fs::setxattr(p, name, value, flags)?)
}

/// getxattr(2) into `buf` (empty: ask for the size); returns the value's length.
pub fn getxattr(p: &Path, name: &str, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(rustix::fs::getxattr_query(p, name)?);
    }
    Ok(rustix::fs::getxattr(p, name, buf)?)
}

/// listxattr(2) into `buf` (empty: ask for the size); returns the length of the name list.
pub fn listxattr(p: &Path, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(rustix::fs::listxattr_query(p)?);
    }
    Ok(rustix::fs::listxattr(p, buf)?)
}

/// removexattr(2).
pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    Ok(rustix::fs::removexattr(p, name)?)
}

/// Every extended attribute of `p`, names with values.
pub fn xattrs(p: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut names = vec![0u8; listxattr(p, &mut [])?];
    let n = listxattr(p, &mut names)?;
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut value = vec![0u8; getxattr(p, &name, &mut [])?];
        let len = if value.is_empty() {
            0
        } else {
            getxattr(p, &name, &mut value)?
        };
        value.truncate(len);
        out.insert(name, value);
    }
    Ok(out)
}
