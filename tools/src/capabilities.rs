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
    if let Some(o) = &offer {
        out!("all INIT flags offered  {}", o.capabilities.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
