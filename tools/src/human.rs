//! Human-readable sizes and terminal progress, shared by the subcommands.

use std::io::{IsTerminal, Write};

/// `1.50GiB`, `12.00KiB`, `0B`: binary units with two decimals, like `btrfs filesystem du`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2}{}", UNITS[unit])
}

/// A one-line progress indicator on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    enabled: bool,
    last: String,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    pub fn update(&mut self, phase: &str, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let pct = (done * 100).checked_div(total).unwrap_or(0).min(100);
        let width = 30usize;
        let filled = (pct as usize * width) / 100;
        let line = format!(
            "\r{phase:<12} [{}{}] {pct:3}%",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        if line != self.last {
            let mut err = std::io::stderr();
            let _ = err.write_all(line.as_bytes());
            let _ = err.flush();
            self.last = line;
        }
    }

    pub fn finish(&mut self) {
        if self.enabled && !self.last.is_empty() {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{}\r", " ".repeat(self.last.len()));
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_like_btrfs() {
        assert_eq!(super::bytes(0), "0B");
        assert_eq!(super::bytes(1023), "1023B");
        assert_eq!(super::bytes(1024), "1.00KiB");
        assert_eq!(super::bytes(3 << 29), "1.50GiB");
    }
}
