//! `cowfs capabilities`: what the running kernel's FUSE offers and what cowfs uses of it.

use crate::CmdResult;
use cowfs_fs::probe;
use std::path::Path;
use std::process::ExitCode;

/// Show the kernel's FUSE features (protocol version by a short probe mount, passthrough,
/// copy_file_range, splice, io_uring) and which of them cowfs uses.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not mount a probe filesystem; report only what /proc and /sys show.
    #[arg(long)]
    pub no_probe: bool,
}

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn run(a: Args) -> CmdResult {
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    out!("kernel                  {release}");
    out!(
        "/dev/fuse               {}",
        yes(Path::new("/dev/fuse").exists())
    );
    let offer = if a.no_probe {
        None
    } else {
        let dir = std::env::temp_dir().join(format!("cowfs-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let r = probe::probe(&dir);
        let _ = std::fs::remove_dir(&dir);
        match r {
            Ok(o) => Some(o),
            Err(e) => {
                out!("probe mount             failed: {e}");
                None
            }
        }
    };
    match &offer {
        Some(o) => out!(
            "FUSE protocol           {}.{} (kernel, from INIT)",
            o.protocol.0,
            o.protocol.1
        ),
        None => out!("FUSE protocol           unknown (no probe mount)"),
    }
    let offers = |flag: &str| offer.as_ref().map(|o| o.offers(flag));
    let show = |v: Option<bool>| v.map_or("unknown", yes);
    let max_pages = read("/proc/sys/fs/fuse/max_pages_limit");
    out!(
        "max_pages_limit         {}  -> cowfs asks max_write 1 MiB (capped by the kernel)",
        max_pages.as_deref().unwrap_or("unknown (default 256)")
    );
    out!(
        "splice                  yes (pipe-max-size {}): cowfs splices read replies by default",
        read("/proc/sys/fs/pipe-max-size").unwrap_or_else(|| "unknown".into())
    );
    out!(
        "passthrough             {}: cowfs serves read-only opens of unmodified lower files by it (-o passthrough=off to stop; off with -o writeback_cache)",
        show(offers("FUSE_PASSTHROUGH"))
    );
    let cfr64 = offer.as_ref().map(|o| o.protocol >= (7, 45));
    out!(
        "copy_file_range         yes (FUSE 7.28+): cowfs answers it with a reflink; 64-bit variant offered: {} (fuser 0.18 decodes only the 32-bit one)",
        show(cfr64)
    );
    out!(
        "writeback cache         {}: off unless -o writeback_cache",
        show(offers("FUSE_WRITEBACK_CACHE"))
    );
    let uring = read("/sys/module/fuse/parameters/enable_uring");
    out!(
        "FUSE over io_uring      {} (enable_uring={}): not used (fuser has no io_uring transport)",
        show(offers("FUSE_OVER_IO_URING")),
        uring.as_deref().unwrap_or("absent")
    );
    out!(
        "readdirplus             {}: used",
        show(offers("FUSE_DO_READDIRPLUS"))
    );
    out!(
        "idle CPUs               {}",
        idle_note(
            read("/sys/devices/system/cpu/cpuidle/current_driver").as_deref(),
            read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").as_deref(),
        )
    );
    if let Some(o) = &offer {
        out!("all INIT flags offered  {}", o.capabilities.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The cpuidle driver, and for a KVM guest's haltpoll how long an idle vCPU polls before it
/// halts. Every FUSE round trip wakes a thread, often on the other CPU; waking a halted vCPU
/// is a VM exit, so a guest that never polls pays it twice per round trip (measured on 2
/// vCPUs: creates and unlinks through cowfs at half the rate they reach with the kernel's
/// default of 200 µs; docs/bench/README.md, "Idle CPUs").
fn idle_note(driver: Option<&str>, poll_ns: Option<&str>) -> String {
    match (driver, poll_ns) {
        (Some(d), Some("0")) => format!(
            "{d}, guest_halt_poll_ns 0: an idle vCPU halts at once, so every FUSE round trip \
             that wakes one costs a VM exit (metadata about 2x slower; the kernel's default \
             is 200000)"
        ),
        (Some(d), Some(ns)) => format!("{d}, guest_halt_poll_ns {ns}"),
        (Some(d), None) => d.to_string(),
        (None, _) => "unknown (no cpuidle driver)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::idle_note;

    #[test]
    fn a_guest_that_never_polls_is_named() {
        let never = idle_note(Some("haltpoll"), Some("0"));
        assert!(never.contains("VM exit"), "{never}");
        assert_eq!(
            idle_note(Some("haltpoll"), Some("200000")),
            "haltpoll, guest_halt_poll_ns 200000"
        );
        assert_eq!(idle_note(Some("intel_idle"), None), "intel_idle");
        assert!(idle_note(None, None).starts_with("unknown"));
    }
}
