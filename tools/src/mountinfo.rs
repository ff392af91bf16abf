//! The cowfs mounts of this mount namespace, from /proc/self/mountinfo: where each is and which
//! store it serves (the mount's source is the store's canonical path).

use std::path::{Path, PathBuf};

/// One `fuse.cowfs` line of mountinfo.
#[derive(Clone, Debug, PartialEq)]
pub struct CowfsMount {
    pub mountpoint: PathBuf,
    /// The mount's source: the store directory.
    pub store: PathBuf,
    /// The mount's device (`major:minor`), what `stat` shows as st_dev of every file in it.
    pub dev: Option<(u32, u32)>,
}

/// Every cowfs mount, in mount order (a later one may be on top of an earlier one).
pub fn cowfs_mounts() -> Vec<CowfsMount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse(&info))
        .unwrap_or_default()
}

fn parse(info: &str) -> Vec<CowfsMount> {
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let (mountpoint, fstype, source) =
                (fields.get(4)?, fields.get(sep + 1)?, fields.get(sep + 2)?);
            let dev = fields.get(2).and_then(|d| {
                let (a, b) = d.split_once(':')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            });
            (*fstype == "fuse.cowfs").then(|| CowfsMount {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                store: PathBuf::from(unescape(source)),
                dev,
            })
        })
        .collect()
}

/// Where the store at `store` is mounted (the mount on top, if several), if it is.
pub fn mount_of_store(store: &Path) -> Option<PathBuf> {
    let store = store.canonicalize().ok()?;
    cowfs_mounts()
        .into_iter()
        .rev()
        .find(|m| m.store == store)
        .map(|m| m.mountpoint)
}

/// The cowfs mount (on top) whose device is `dev` (a st_dev), if there is one.
pub fn mount_of_dev(dev: u64) -> Option<CowfsMount> {
    let want = (rustix::fs::major(dev), rustix::fs::minor(dev));
    cowfs_mounts()
        .into_iter()
        .rev()
        .find(|m| m.dev == Some(want))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_cowfs_lines_and_unescapes_their_paths() {
        let info = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
43 27 0:40 / /tmp/a\\040b/mnt rw,nosuid,nodev,relatime - fuse.cowfs /tmp/a\\040b/store rw,user_id=0
44 27 0:41 / /tmp/other rw - fuse.sshfs host:/x rw\n";
        let m = super::parse(info);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mountpoint.to_str(), Some("/tmp/a b/mnt"));
        assert_eq!(m[0].store.to_str(), Some("/tmp/a b/store"));
        assert_eq!(m[0].dev, Some((0, 40)));
    }
}
