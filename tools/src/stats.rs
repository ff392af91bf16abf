//! `cowfs stats`: the counters of a mounted store, asked of its daemon.

use crate::CmdResult;
use cowfs_fs::control;
use std::path::PathBuf;
use std::process::ExitCode;

/// Show a mount's counters: bytes read by splice / buffer, opens served by passthrough,
/// reflinked and written bytes.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub mountpoint: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> CmdResult {
    let s = control::query(&a.mountpoint)?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &s.counters;
    out!("mountpoint              {}", s.mountpoint);
    out!("store                   {}", s.store);
    out!("daemon pid              {}", s.pid);
    out!("FUSE protocol           {}", s.fuse_protocol);
    out!("copy mode               {}", s.copy_mode);
    out!("max write               {}", s.max_write);
    out!(
        "writeback cache         {}",
        if s.writeback_cache { "on" } else { "off" }
    );
    out!("commits                 {}", s.commits);
    out!(
        "read-only               {}",
        if s.read_only { "yes" } else { "no" }
    );
    for (name, v) in [
        ("read bytes spliced", c.read_bytes_spliced),
        ("passthrough opens", c.passthrough_opens),
        ("read bytes buffered", c.read_bytes_buffered),
        ("splice fallbacks", c.splice_fallbacks),
        ("reflink bytes", c.reflink_bytes),
        ("reflinks", c.reflinks),
        ("write bytes", c.write_bytes),
        ("reads", c.reads),
        ("writes", c.writes),
        ("fsyncs", c.fsyncs),
        ("seek writebacks", c.seek_writebacks),
        ("errors", c.errors),
        ("I/O errors", c.io_errors),
    ] {
        out!("{name:<24}{v}");
    }
    Ok(ExitCode::SUCCESS)
}
