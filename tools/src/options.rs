//! `-o` mount options: what cowfs understands, and the standard ones it accepts and ignores.

use cowfs_fs::{CopyMode, FsConfig, MountOption, SessionACL};
use cowstore::{AtimeMode, AtimePolicy};
use std::path::PathBuf;
use std::time::Duration;

/// Parsed `-o` options.
#[derive(Clone, Debug, PartialEq)]
pub struct MountOpts {
    pub read_only: bool,
    pub acl: SessionACL,
    pub suid: bool,
    pub dev: bool,
    pub noexec: bool,
    /// relatime (default), strictatime, noatime, nodiratime: applied by the daemon (the kernel
    /// leaves FUSE atimes alone); noatime is also passed to the kernel.
    pub atime: AtimePolicy,
    pub sync: bool,
    pub dirsync: bool,
    /// Seconds between periodic commits; 0 commits only on fsync, `cowfs sync` and unmount.
    pub commit_secs: u64,
    pub copy_mode: CopyMode,
    pub threads: usize,
    pub ttl_secs: u64,
    pub readahead_kb: Option<u32>,
    /// `writeback_cache`/`no_writeback_cache`; unset, see [`MountOpts::writeback_cache`].
    pub writeback_cache: Option<bool>,
    /// `wb_max_ratio=N`: see [`cowfs_fs::session::MountSpec::wb_max_ratio`].
    pub wb_max_ratio: u32,
    /// FUSE passthrough for read-only opens of unmodified lower files (when the kernel has it).
    pub passthrough: bool,
    pub log: Option<PathBuf>,
    pub debug: bool,
    /// `remount`: change the flags of the live mount instead of mounting (see `mount::remount`).
    pub remount: bool,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            read_only: false,
            acl: SessionACL::Owner,
            suid: false,
            dev: false,
            noexec: false,
            atime: AtimePolicy::default(),
            sync: false,
            dirsync: false,
            commit_secs: 5,
            copy_mode: CopyMode::Splice,
            // More threads than CPUs: a thread serving a cold read blocks on the disk inside
            // splice, so with one thread per CPU concurrent readers queue behind each other
            // (measured, 4 fio jobs of 4 KiB random reads, 2 CPUs: 54 MiB/s with 2 threads,
            // 83 MiB/s with 8). Each thread costs a request buffer and a splice pipe.
            threads: (std::thread::available_parallelism().map_or(2, |n| n.get()) * 4).clamp(4, 16),
            ttl_secs: 10,
            readahead_kb: None,
            writeback_cache: None,
            wb_max_ratio: cowfs_fs::session::DEFAULT_WB_MAX_RATIO,
            passthrough: true,
            log: None,
            debug: false,
            remount: false,
        }
    }
}

/// Standard mount(8)/fstab options with no effect here.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "lazytime",
    "nolazytime",
    "async",
    "nosuid",
    "nodev",
    "exec",
    "nodirsync",
    "auto_unmount",
    "big_writes",
];

pub const HELP: &str = "\
Mount options (-o OPT[,OPT...]):
  ro                     read-only: the store is opened read-only
  allow_other            let other users use the mount (allow_root: only root besides the owner)
  default_permissions    the kernel checks permissions, POSIX ACLs included (always on;
                         no_default_permissions is refused: cowfs does not check them itself)
  suid, dev              honour setuid bits / device files (off by default: nosuid, nodev)
  noexec, sync, dirsync  passed to the kernel
  relatime, strictatime, noatime, nodiratime    when reads and listings update access times
                         (default relatime: the first access after a change, or a day later;
                         atime, diratime undo noatime, nodiratime)
  commit=SECONDS         commit every SECONDS when there are changes (default 5; 0: only on
                         fsync, `cowfs sync` and unmount; sync(1) never reaches the daemon)
  copy_mode=splice|buffered    how read data reaches the kernel (default splice: zero-copy)
  threads=N              request threads (default: 4 per CPU, 4..16)
  ttl=SECONDS            attribute and entry cache time in the kernel (default 10)
  readahead_kb=N         kernel readahead for the mount (default 8192: several ~1 MiB read
                         requests in flight; 0 keeps the kernel's 128)
  writeback_cache, no_writeback_cache    whether the kernel caches writes and writes them
                         back in large batches (default off: faster random writes, slower
                         stat after close). With it, ENOSPC and I/O errors of cached writes
                         are reported by fsync and close, not by write
  wb_max_ratio=N         with the writeback cache: the percentage of the kernel's dirty limit
                         the mount's cached writes may take (default 20; the kernel gives a
                         FUSE mount 1, a few tens of MB, which halves random-write speed).
                         The kernel's strict_limit stays on, so the rest stays with the
                         pool's filesystem; 0 keeps the kernel's limit
  passthrough=on|off     the kernel reads unmodified lower files opened read-only straight
                         from the lower file (FUSE passthrough; default on where the kernel
                         offers it; the writeback cache turns it off). While such an open
                         exists, a writer of that file waits up to 0.5 s for it to close, then
                         gets ETXTBSY
  log=FILE               daemon log file (default STORE/cowfs.log; -f logs to stderr)
  debug                  log every request (very verbose)
  remount                change the live mount: ro/rw, suid, dev, exec, sync, dirsync (the
                         others keep the values the mount was made with); going read-only
                         commits the store once, and then nothing changes it (no access
                         times, no commits) until remount,rw
Accepted and ignored: rw, defaults, auto, noauto, user, nouser, _netdev, nofail, lazytime, exec,
  nosuid, nodev, async, x-*, and other fstab-only options.
As the mount helper of mount(8) (mount -t fuse.cowfs, fstab), suid and dev are on unless nosuid
  or nodev is given, as for every filesystem mount(8) mounts: it passes only the ones that are
  off (and adds them itself for user mounts).";

fn num(key: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("mount option {key}={v}: not a number"))
}

/// Parse `-o` arguments (each may hold several comma-separated options). `sloppy` (mount(8)'s
/// `-s`) skips unknown options instead of refusing them, and returns them.
pub fn parse_with(args: &[String], sloppy: bool) -> Result<(MountOpts, Vec<String>), String> {
    let mut o = MountOpts::default();
    let mut skipped = Vec::new();
    let all: Vec<&str> = args
        .iter()
        .flat_map(|a| a.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    // mount(8) hands a remount the options of the live mount, the kernel's FUSE ones included.
    let remount = all.contains(&"remount");
    for &opt in &all {
        let (key, val) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, val) {
            ("ro", None) => o.read_only = true,
            ("allow_other", None) => o.acl = SessionACL::All,
            ("allow_root", None) => o.acl = SessionACL::RootAndOwner,
            ("default_permissions", None) => {}
            ("no_default_permissions", None) => {
                return Err(
                    "mount option no_default_permissions is not supported: the kernel \
                     checks every permission (mode bits, POSIX ACLs, supplementary groups) with \
                     default_permissions, and cowfs does not check permissions itself"
                        .into(),
                )
            }
            ("suid", None) => o.suid = true,
            ("dev", None) => o.dev = true,
            ("noexec", None) => o.noexec = true,
            ("noatime", None) => o.atime.mode = AtimeMode::Never,
            ("relatime" | "atime", None) => o.atime.mode = AtimeMode::Relatime,
            ("strictatime", None) => o.atime.mode = AtimeMode::Strict,
            ("nodiratime", None) => o.atime.nodiratime = true,
            ("diratime", None) => o.atime.nodiratime = false,
            ("sync", None) => o.sync = true,
            ("dirsync", None) => o.dirsync = true,
            ("commit", Some(v)) => o.commit_secs = num(key, v)?,
            ("copy_mode", Some("splice")) => o.copy_mode = CopyMode::Splice,
            ("copy_mode", Some("buffered")) => o.copy_mode = CopyMode::Buffered,
            ("copy_mode", Some(v)) => {
                return Err(format!(
                    "mount option copy_mode={v}: use splice or buffered"
                ))
            }
            ("threads", Some(v)) => o.threads = (num(key, v)? as usize).clamp(1, 64),
            ("ttl", Some(v)) => o.ttl_secs = num(key, v)?,
            ("readahead_kb", Some(v)) => {
                o.readahead_kb = Some(u32::try_from(num(key, v)?).map_err(|e| e.to_string())?)
            }
            ("writeback_cache", None) => o.writeback_cache = Some(true),
            ("no_writeback_cache", None) => o.writeback_cache = Some(false),
            ("wb_max_ratio", Some(v)) => {
                o.wb_max_ratio = match num(key, v)? {
                    n @ 0..=100 => n as u32,
                    _ => return Err(format!("mount option {key}={v}: a percentage, 0 to 100")),
                }
            }
            ("passthrough", Some("on")) => o.passthrough = true,
            ("passthrough", Some("off")) => o.passthrough = false,
            ("passthrough", Some(v)) => {
                return Err(format!("mount option passthrough={v}: use on or off"))
            }
            ("log", Some(v)) => o.log = Some(PathBuf::from(v)),
            ("debug", None) => o.debug = true,
            ("remount", None) => o.remount = true,
            // Set by the kernel's FUSE from the daemon's ids; they come back in a remount.
            ("user_id" | "group_id", Some(v)) if remount => {
                num(key, v)?;
            }
            // fstab and mount(8) bookkeeping.
            (k, _) if k.starts_with("x-") || k == "fsname" || k == "subtype" => {}
            (k, None) if IGNORED.contains(&k) => {}
            _ if sloppy => skipped.push(opt.to_string()),
            _ => {
                return Err(format!(
                    "unknown mount option {opt:?} (see cowfs mount --help)"
                ))
            }
        }
    }
    if o.suid && all.contains(&"nosuid") {
        return Err("mount options suid and nosuid conflict".into());
    }
    Ok((o, skipped))
}

impl MountOpts {
    /// The kernel mount options these stand for.
    pub fn kernel_options(&self) -> Vec<MountOption> {
        let mut v = Vec::new();
        if self.read_only {
            v.push(MountOption::RO);
        }
        // Always: the kernel makes every permission check (FUSE_POSIX_ACL implies it too).
        v.push(MountOption::DefaultPermissions);
        if self.suid {
            v.push(MountOption::Suid);
        }
        if self.dev {
            v.push(MountOption::Dev);
        }
        if self.noexec {
            v.push(MountOption::NoExec);
        }
        if self.atime.mode == AtimeMode::Never {
            v.push(MountOption::NoAtime);
        }
        if self.sync {
            v.push(MountOption::Sync);
        }
        if self.dirsync {
            v.push(MountOption::DirSync);
        }
        v
    }

    /// Whether the kernel caches writes (FUSE_WRITEBACK_CACHE), for a mount with a `lower`
    /// directory or without. Default off. With it, 4 KiB random writes run about twice as fast
    /// (0.16x -> 0.34x of ext4, docs/bench), but every close sends a FLUSH and leaves the
    /// kernel's st_blocks stale, so each stat after a close is a round trip: stat of files just
    /// made 362k -> 58k a second, cp -a and rsync -a a third slower (same run). Over a lower
    /// directory it would also turn FUSE passthrough off. Opt in with `writeback_cache`.
    pub fn writeback_cache(&self, _lower: bool) -> bool {
        self.writeback_cache.unwrap_or(false)
    }

    /// The adapter's settings, for a mount with a `lower` directory or without.
    pub fn fs_config(&self, lower: bool) -> FsConfig {
        FsConfig {
            copy_mode: self.copy_mode,
            ttl: Duration::from_secs(self.ttl_secs),
            writeback_cache: self.writeback_cache(lower),
            atime: self.atime,
            passthrough: self.passthrough,
            ..FsConfig::default()
        }
    }

    pub fn open_options(&self) -> cowstore::OpenOptions {
        cowstore::OpenOptions {
            read_only: self.read_only,
            commit_interval: (self.commit_secs > 0).then(|| Duration::from_secs(self.commit_secs)),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[String]) -> Result<MountOpts, String> {
        parse_with(args, false).map(|(o, _)| o)
    }

    fn p(s: &str) -> Result<MountOpts, String> {
        parse(&[s.to_string()])
    }

    #[test]
    fn parses_ours_and_ignores_standard_ones() -> Result<(), String> {
        let o = parse(&[
            "ro,allow_other".into(),
            "commit=0,copy_mode=buffered,rw,nosuid,x-systemd.automount".into(),
        ])?;
        assert!(o.read_only);
        assert_eq!(o.acl, SessionACL::All);
        assert_eq!(o.commit_secs, 0);
        assert_eq!(o.copy_mode, CopyMode::Buffered);
        assert!(o
            .kernel_options()
            .contains(&MountOption::DefaultPermissions));
        assert_eq!(o.open_options().commit_interval, None);
        let o = p("suid,dev,default_permissions,threads=3,ttl=0")?;
        assert!(o.suid && o.dev);
        assert_eq!((o.threads, o.ttl_secs), (3, 0));
        assert!(o.kernel_options().contains(&MountOption::Suid));
        Ok(())
    }

    #[test]
    fn atime_options_reach_the_daemon() -> Result<(), String> {
        // Regression (issue 10, defect 18): relatime, strictatime, noatime and nodiratime were
        // ignored (and FUSE leaves atime to the daemon), so atime never changed.
        let policy = |s: &str| p(s).map(|o| o.fs_config(false).atime);
        assert_eq!(policy("rw")?, AtimePolicy::default());
        assert_eq!(policy("rw")?.mode, AtimeMode::Relatime);
        assert_eq!(policy("strictatime")?.mode, AtimeMode::Strict);
        assert_eq!(policy("noatime")?.mode, AtimeMode::Never);
        assert_eq!(policy("noatime,relatime")?.mode, AtimeMode::Relatime);
        let d = policy("strictatime,nodiratime")?;
        assert!(d.nodiratime && d.mode == AtimeMode::Strict);
        assert!(!policy("nodiratime,diratime")?.nodiratime);
        assert!(p("noatime")?
            .kernel_options()
            .contains(&MountOption::NoAtime));
        assert!(!p("relatime")?
            .kernel_options()
            .contains(&MountOption::NoAtime));
        Ok(())
    }

    #[test]
    fn passthrough_is_on_unless_turned_off() -> Result<(), String> {
        assert!(p("rw")?.fs_config(true).passthrough);
        assert!(!p("passthrough=off")?.fs_config(true).passthrough);
        assert!(
            p("passthrough=off,passthrough=on")?
                .fs_config(true)
                .passthrough
        );
        assert!(p("passthrough=maybe").is_err());
        Ok(())
    }

    #[test]
    fn the_writeback_cache_is_opt_in() -> Result<(), String> {
        let wb = |s: &str, lower: bool| p(s).map(|o| o.fs_config(lower).writeback_cache);
        assert!(!wb("rw", false)?, "a plain store: off by default");
        assert!(!wb("rw", true)?, "over a lower directory: passthrough");
        assert!(wb("writeback_cache", false)?);
        assert!(wb("writeback_cache", true)?, "asked for: passthrough goes");
        assert!(!wb("no_writeback_cache", false)?);
        assert!(wb("no_writeback_cache,writeback_cache", false)?);
        Ok(())
    }

    #[test]
    fn wb_max_ratio_is_a_percentage() -> Result<(), String> {
        assert_eq!(p("rw")?.wb_max_ratio, 20);
        assert_eq!(p("wb_max_ratio=0")?.wb_max_ratio, 0);
        assert_eq!(p("wb_max_ratio=100")?.wb_max_ratio, 100);
        assert!(p("wb_max_ratio=101").is_err());
        assert!(p("wb_max_ratio=lots").is_err());
        Ok(())
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        assert!(p("bogus").is_err());
        assert!(p("commit=soon").is_err());
        assert!(p("copy_mode=mmap").is_err());
        assert!(p("suid,nosuid").is_err());
    }

    #[test]
    fn remount_takes_what_mount_passes_from_the_live_mount() -> Result<(), String> {
        // Regression (issue 13): `mount -o remount,ro MNT` hands the helper the mount's own
        // options, the kernel's user_id and group_id included, which were refused.
        let o =
            p("ro,nosuid,nodev,noexec,relatime,remount,user_id=0,group_id=0,default_permissions")?;
        assert!(o.remount && o.read_only && o.noexec && !o.suid && !o.dev);
        assert!(
            p("user_id=0").is_err(),
            "user_id is the kernel's, not a mount option"
        );
        assert!(p("remount,user_id=zero").is_err());
        Ok(())
    }

    #[test]
    fn sloppy_skips_unknown_options_and_still_refuses_bad_values() -> Result<(), String> {
        let (o, skipped) = parse_with(&["ro,bogus=1,frob".into()], true)?;
        assert!(o.read_only);
        assert_eq!(skipped, ["bogus=1", "frob"]);
        assert!(parse_with(&["commit=soon".into()], true).is_err());
        Ok(())
    }

    #[test]
    fn refuses_no_default_permissions() {
        // Regression (issue 10, defect 10): no_default_permissions turned every permission
        // check off while --help said cowfs would check instead.
        let e = p("no_default_permissions").err().unwrap_or_default();
        assert!(e.contains("no_default_permissions is not supported"), "{e}");
        assert!(HELP.contains("no_default_permissions is refused"));
    }
}
