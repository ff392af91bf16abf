//! Real mounts: `cowfs du`, `cowfs inspect` and `cowfs fsck` of a live mount (issue 13) are
//! answered by the daemon from the last committed state, with the output of the same commands
//! on the unmounted store; fsck of a mounted store checks read-only and refuses to repair.

mod common;

use common::*;
use std::fs;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A files tree with shared space: `dir/b` is a `cp` of `dir/a` (copy_file_range: shared
/// extents), `dir/sub/c` and `top` are exclusive; committed with `cowfs sync`.
fn populate(m: &Mount) -> TestResult {
    fs::create_dir_all(m.path("dir/sub"))?;
    fs::write(m.path("dir/a"), pattern(1, 300_000))?;
    let cp = Command::new("cp")
        .arg(m.path("dir/a"))
        .arg(m.path("dir/b"))
        .status()?;
    assert!(cp.success(), "cp failed");
    fs::write(m.path("dir/sub/c"), pattern(2, 70_000))?;
    fs::write(m.path("top"), pattern(3, 9_000))?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    Ok(())
}

/// fsck's last line with its generation left out: the unmount commits once more.
fn fsck_summary(stdout: &str) -> String {
    let last = stdout.lines().last().unwrap_or_default();
    match (last.find("generation "), last.find(", ")) {
        (Some(a), Some(_)) => {
            let rest = &last[a + "generation ".len()..];
            let after = rest.find(',').map_or("", |i| &rest[i..]);
            format!("{}generation N{after}", &last[..a])
        }
        _ => last.to_string(),
    }
}

#[test]
fn du_inspect_and_fsck_of_a_live_mount_equal_those_of_the_unmounted_store() -> TestResult {
    // Regression (issue 13): du/inspect/fsck of a mounted store failed with "store is in use";
    // they now ask the daemon, which reads the last commit, and print what the unmounted store
    // shows.
    // commit=0: only `cowfs sync`, fsync and the unmount commit, so the state is known.
    let mut m = Mount::new(&["commit=0"])?;
    populate(&m)?;
    let (store, mnt) = (path_str(&m.store).to_string(), path_str(&m.mnt).to_string());
    let mnt_dir = format!("{mnt}/dir");
    let mnt_b = format!("{mnt}/dir/b");

    let live_du_store = run_ok(&["du", "--raw", &store])?;
    let live_du_store_dir = run_ok(&["du", "--raw", &store, "/dir"])?;
    let live_du_mnt_dir = run_ok(&["du", "--raw", &mnt_dir])?;
    let live_du_file = run_ok(&["du", "--raw", &format!("{mnt}/dir/a")])?;
    let live_du_json = run_ok(&["du", "-s", "--json", &store, "/dir", "/top"])?;
    let live_inspect_store_b = run_ok(&["inspect", &store, "/dir/b"])?;
    let live_inspect_mnt_b = run_ok(&["inspect", &mnt_b])?;
    let live_inspect_json = run_ok(&["inspect", "--json", &mnt_b])?;
    let live_summary: serde_json::Value =
        serde_json::from_str(&run_ok(&["inspect", "--json", &store])?)?;
    let live_fsck = cowfs(&["fsck", &store])?;
    assert_eq!(live_fsck.status.code(), Some(0), "{}", text(&live_fsck));
    let live_fsck_json = cowfs(&["fsck", "--json", &store])?;
    assert_eq!(
        live_fsck_json.status.code(),
        Some(0),
        "{}",
        text(&live_fsck_json)
    );
    let fsck_doc: serde_json::Value = serde_json::from_slice(&live_fsck_json.stdout)?;
    assert_eq!(fsck_doc["clean"], true, "{fsck_doc}");

    // The numbers are right, not only equal: a and b share their blocks, set shared counts
    // them once.
    let row = |out: &str, name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.ends_with(&format!("  {name}")))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let a = row(&live_du_mnt_dir, &format!("{mnt}/dir/a"));
    assert_eq!(
        a.first().map(String::as_str),
        Some("303104"),
        "{live_du_mnt_dir}"
    );
    assert_eq!(a.get(1).map(String::as_str), Some("0"), "{live_du_mnt_dir}");
    let dir = row(&live_du_mnt_dir, &mnt_dir);
    // a + b (shared, counted twice in the total) + sub/c (exclusive, 18 blocks).
    assert_eq!(
        dir.iter().take(3).map(String::as_str).collect::<Vec<_>>(),
        ["679936", "73728", "303104"],
        "{live_du_mnt_dir}"
    );
    assert_eq!(live_du_file.lines().count(), 2, "{live_du_file}");
    assert!(
        live_inspect_mnt_b.contains("refcount") && live_inspect_mnt_b.contains(" 2\n"),
        "{live_inspect_mnt_b}"
    );
    assert_eq!(live_summary["inodes"], 7, "{live_summary}");

    m.umount()?;

    assert_eq!(run_ok(&["du", "--raw", &store])?, live_du_store);
    let off_dir = run_ok(&["du", "--raw", &store, "/dir"])?;
    assert_eq!(off_dir, live_du_store_dir);
    assert_eq!(
        live_du_mnt_dir.replace(&mnt, ""),
        off_dir,
        "same rows, named by mount path"
    );
    assert_eq!(
        run_ok(&["du", "-s", "--json", &store, "/dir", "/top"])?,
        live_du_json
    );
    let off_inspect = run_ok(&["inspect", &store, "/dir/b"])?;
    assert_eq!(off_inspect, live_inspect_store_b);
    assert_eq!(live_inspect_mnt_b.replace(&mnt, ""), off_inspect);
    let off_json: serde_json::Value =
        serde_json::from_str(&run_ok(&["inspect", "--json", &store, "/dir/b"])?)?;
    let mut live_json: serde_json::Value = serde_json::from_str(&live_inspect_json)?;
    live_json["path"] = "/dir/b".into();
    assert_eq!(live_json, off_json);
    let off_summary: serde_json::Value =
        serde_json::from_str(&run_ok(&["inspect", "--json", &store])?)?;
    for k in [
        "inodes",
        "extents",
        "referenced_bytes",
        "shared_bytes",
        "exclusive_bytes",
    ] {
        assert_eq!(live_summary[k], off_summary[k], "{k}");
    }
    let off_fsck = cowfs(&["fsck", &store])?;
    assert_eq!(off_fsck.status.code(), Some(0), "{}", text(&off_fsck));
    assert_eq!(
        fsck_summary(&String::from_utf8_lossy(&live_fsck.stdout)),
        fsck_summary(&String::from_utf8_lossy(&off_fsck.stdout))
    );
    assert!(
        String::from_utf8_lossy(&off_fsck.stdout).contains(": clean"),
        "{}",
        text(&off_fsck)
    );
    Ok(())
}

#[test]
fn fsck_repair_and_scrub_of_a_mounted_store_are_refused() -> TestResult {
    // Regression (issue 13): fsck of a mounted store must never write to it; --repair (and
    // --scrub, which needs the pool to itself) are refused with exit 8 and a reason.
    let mut m = Mount::new(&["commit=0"])?;
    populate(&m)?;
    let store = path_str(&m.store).to_string();
    for flag in ["--repair", "--scrub"] {
        let o = cowfs(&["fsck", flag, &store])?;
        assert_eq!(o.status.code(), Some(8), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(flag) && err.contains("mounted") && err.contains("unmount it first"),
            "{}",
            text(&o)
        );
    }
    // The mount still serves, and fsck by mountpoint checks the same store.
    assert_eq!(fs::read(m.path("top"))?, pattern(3, 9_000));
    let o = cowfs(&["fsck", path_str(&m.mnt)])?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    m.umount()?;
    let o = cowfs(&["fsck", &store])?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    Ok(())
}

#[test]
fn live_du_shows_the_last_commit_and_does_not_hold_up_a_writer() -> TestResult {
    // Regression (issue 13): a live report reads the last commit through a snapshot, not under
    // the store lock: writes go on meanwhile, and what they changed shows after `cowfs sync`.
    let mut m = Mount::new(&["commit=0"])?;
    populate(&m)?;
    let store = path_str(&m.store).to_string();
    let before = run_ok(&["du", "--raw", &store])?;

    let stop = Arc::new(AtomicBool::new(false));
    let path = m.path("w");
    let flag = stop.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        use std::io::Write;
        let mut f = fs::File::create(&path)?;
        let chunk = pattern(9, 64 << 10);
        let (mut written, mut worst) = (0u64, Duration::ZERO);
        while !flag.load(Ordering::SeqCst) || written < (4 << 20) {
            let t = Instant::now();
            f.write_all(&chunk)?;
            worst = worst.max(t.elapsed());
            written += chunk.len() as u64;
            if written >= (64 << 20) {
                break;
            }
        }
        Ok((written, worst))
    });
    let mut reports = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let now = run_ok(&["du", "--raw", &store])?;
        assert_eq!(now, before, "uncommitted writes are not in a live du");
        reports += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let (written, worst) = writer.join().map_err(|_| "writer panicked")??;
    assert!(reports >= 2, "{reports} reports in 2 s");
    assert!(
        worst < Duration::from_secs(1),
        "a write waited {worst:?} while du ran"
    );

    // A file the last commit does not have yet is not found, and says so.
    let o = cowfs(&["du", path_str(&m.path("w"))])?;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in the last commit"),
        "{}",
        text(&o)
    );
    run_ok(&["sync", path_str(&m.mnt)])?;
    let after = run_ok(&["du", "--raw", "-s", path_str(&m.path("w"))])?;
    let total: u64 = after
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no total in {after:?}"))?;
    assert_eq!(total, written, "{after}");
    m.umount()?;
    let o = cowfs(&["fsck", &store])?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    Ok(())
}
