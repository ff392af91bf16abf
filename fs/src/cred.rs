//! The credentials of the process behind a FUSE request. The kernel sends only its uid, gid
//! and pid; supplementary groups and capabilities are read from `/proc/PID/status` when a rule
//! of the store asks for them (setgid and setuid bits on fallocate and ACL changes, trusted.*
//! listing), which is rare.
//!
//! The read is racy by nature: the process may change its groups or capabilities, or exit,
//! between its system call and our read; an exited process (or pid 0, a process outside our
//! pid namespace) counts as in its primary group only, and privileged only as root. The kernel
//! itself makes every permission decision that gates access (default_permissions); what
//! depends on this read is whether a setgid/setuid bit survives and whether trusted.* names are
//! listed, and the answer is the one the process had an instant later.

use cowstore::acl::{Capability, Cred};
use cowstore::Caller;
use std::sync::OnceLock;

/// What `/proc/PID/status` says of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Status {
    groups: Vec<u32>,
    cap_eff: u64,
}

impl Status {
    /// The `Groups:` and `CapEff:` lines; `None` if either is missing or malformed.
    fn parse(text: &str) -> Option<Status> {
        let mut groups = None;
        let mut cap_eff = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("Groups:") {
                groups = v
                    .split_whitespace()
                    .map(|g| g.parse().ok())
                    .collect::<Option<Vec<u32>>>();
            } else if let Some(v) = line.strip_prefix("CapEff:") {
                cap_eff = u64::from_str_radix(v.trim(), 16).ok();
            }
        }
        Some(Status {
            groups: groups?,
            cap_eff: cap_eff?,
        })
    }
}

/// The requesting process: uid and gid from the request, the rest read once on demand.
#[derive(Debug)]
pub struct RequestCred {
    caller: Caller,
    pid: u32,
    status: OnceLock<Option<Status>>,
}

impl RequestCred {
    pub fn new(caller: Caller, pid: u32) -> RequestCred {
        RequestCred {
            caller,
            pid,
            status: OnceLock::new(),
        }
    }

    fn status(&self) -> Option<&Status> {
        self.status
            .get_or_init(|| {
                if self.pid == 0 {
                    return None;
                }
                // The pid FUSE sends is the calling thread's; /proc/TID/status has that
                // thread's credentials.
                let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
                Status::parse(&text)
            })
            .as_ref()
    }
}

impl Cred for RequestCred {
    fn caller(&self) -> Caller {
        self.caller
    }

    fn in_group(&self, gid: u32) -> bool {
        gid == self.caller.gid || self.status().is_some_and(|s| s.groups.contains(&gid))
    }

    fn capable(&self, cap: Capability) -> bool {
        match self.status() {
            Some(s) => s.cap_eff & (1u64 << (cap as u32)) != 0,
            None => self.caller.uid == 0,
        }
    }
}

/// A writer whose CAP_FSETID the kernel told us (FUSE_WRITE_KILL_SUIDGID, computed with
/// `capable()` at the write) in place of what `/proc` says; groups and other capabilities come
/// from the request's credentials.
pub struct KernelFsetid<'a> {
    cred: &'a dyn Cred,
    fsetid: bool,
}

impl<'a> KernelFsetid<'a> {
    pub fn new(cred: &'a dyn Cred, fsetid: bool) -> KernelFsetid<'a> {
        KernelFsetid { cred, fsetid }
    }
}

impl Cred for KernelFsetid<'_> {
    fn caller(&self) -> Caller {
        self.cred.caller()
    }

    fn in_group(&self, gid: u32) -> bool {
        self.cred.in_group(gid)
    }

    fn capable(&self, cap: Capability) -> bool {
        match cap {
            Capability::Fsetid => self.fsetid,
            _ => self.cred.capable(cap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_capabilities() {
        let text = "Name:\tbash\nUid:\t65534\t65534\t65534\t65534\nGroups:\t1 65534 \n\
                    CapInh:\t0000000000000000\nCapEff:\t0000000000200010\n";
        let s = Status::parse(text);
        assert_eq!(
            s,
            Some(Status {
                groups: vec![1, 65534],
                cap_eff: 0x20_0010
            })
        );
        assert_eq!(
            Status::parse("Groups:\t\nCapEff:\t0\n").map(|s| s.groups),
            Some(vec![])
        );
        assert_eq!(Status::parse("Groups:\tx\nCapEff:\t0\n"), None);
        assert_eq!(Status::parse("Groups:\t1\n"), None);
    }

    #[test]
    fn this_process_and_a_missing_one() {
        let me = RequestCred::new(Caller { uid: 0, gid: 0 }, std::process::id());
        // Root in CI; whatever we are, the answer comes from our own status file.
        let mine = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| Status::parse(&t));
        assert_eq!(me.status(), mine.as_ref());
        let gone = RequestCred::new(Caller { uid: 5, gid: 7 }, 0);
        assert!(gone.in_group(7) && !gone.in_group(8));
        assert!(!gone.capable(Capability::Fsetid));
    }

    #[test]
    fn the_kernel_answers_for_cap_fsetid_only() {
        let root = Caller::ROOT;
        let told = KernelFsetid::new(&root, false);
        assert!(!told.capable(Capability::Fsetid));
        assert!(told.capable(Capability::SysAdmin));
        assert!(told.in_group(0) && !told.in_group(5));
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
        };
        assert!(KernelFsetid::new(&nobody, true).capable(Capability::Fsetid));
        assert_eq!(KernelFsetid::new(&nobody, true).caller(), nobody);
    }
}
