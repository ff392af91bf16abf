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

/// `12.3k/s`: a rate of entries per second, three digits at most.
fn rate(per_sec: f64) -> String {
    if per_sec >= 999_500.0 {
        format!("{:.1}M/s", per_sec / 1e6)
    } else if per_sec >= 999.5 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// `42s`, `3m07s`, `2h05m`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The line `cowfs snapshot` shows for a phase of the daemon's tree operation (under 80
/// columns): with a total, a bar, `done/total`, the rate and the time left; without one (the
/// counting before it is known), the count and the rate.
///
/// `snapshot copying    [############------------] 10000/20001 52.1k/s ETA 1s`
pub fn tree_progress_line(
    what: &str,
    phase: &str,
    done: u64,
    total: Option<u64>,
    per_sec: Option<f64>,
) -> String {
    const WIDTH: u64 = 24;
    let per_sec = per_sec.filter(|r| r.is_finite() && *r > 0.0);
    let Some(total) = total else {
        let mut line = format!("{what} {phase:<10} {done} entries");
        if let Some(r) = per_sec {
            line.push_str(&format!(" {}", rate(r)));
        }
        return line;
    };
    let filled = (u128::from(done.min(total)) * u128::from(WIDTH))
        .checked_div(u128::from(total))
        .map_or(WIDTH, |f| f as u64);
    let mut line = format!(
        "{what} {phase:<10} [{}{}] {done}/{total}",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    );
    if let Some(r) = per_sec {
        line.push_str(&format!(" {}", rate(r)));
        if done < total {
            let left = ((total - done) as f64 / r).ceil() as u64;
            line.push_str(&format!(" ETA {}", duration(left)));
        }
    }
    line
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

    #[test]
    fn tree_progress_shows_count_total_rate_and_time_left() {
        use super::tree_progress_line as line;
        assert_eq!(
            line("snapshot", "copying", 10_000, Some(20_001), Some(52_100.0)),
            "snapshot copying    [###########-------------] 10000/20001 52.1k/s ETA 1s"
        );
        assert_eq!(
            line("delete", "removing", 5, Some(1_000_000), Some(9.5)),
            "delete removing   [------------------------] 5/1000000 10/s ETA 29h14m"
        );
        assert_eq!(
            line("snapshot", "committing", 7, Some(7), Some(100.0)),
            "snapshot committing [########################] 7/7 100/s"
        );
        assert_eq!(
            line("snapshot", "copying", 1, Some(7), None),
            "snapshot copying    [###---------------------] 1/7"
        );
        assert_eq!(
            line("snapshot", "counting", 123_456, None, Some(2.5e6)),
            "snapshot counting   123456 entries 2.5M/s"
        );
        assert_eq!(
            line("snapshot", "copying", 9, Some(0), Some(f64::INFINITY)),
            "snapshot copying    [########################] 9/0"
        );
        assert_eq!(super::duration(187), "3m07s");
        assert!(
            line(
                "snapshot",
                "copying",
                1 << 40,
                Some(u64::MAX / 2),
                Some(1.0)
            )
            .len()
                < 120
        );
    }
}
