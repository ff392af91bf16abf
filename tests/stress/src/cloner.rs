//! fsx companion: while fsx changes FILE, make reflink copies of it with `cp` at random
//! moments, then write into the copies and check them against a model.
//!
//! fsx truncates (or, in blockmode, zero-fills) its file when it starts, so a copy made before
//! fsx started would share nothing by fsx's first operation. Copies made while it runs share
//! the blocks fsx is about to change: every later fsx write, mapwrite, truncate, punch_hole,
//! fallocate or copy_file_range then hits shared blocks (fsx checks its side), and our writes
//! to the copies hit blocks fsx's file still shares (we check this side). A copy is read back
//! whole right after `cp` as its model; a later difference means one side's change leaked
//! into the other.

use crate::util::{compare, cp, errno, io_fail, write_into, write_range, Res, Rng};
use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file fsx is working on.
    #[arg(long)]
    file: PathBuf,
    /// Where to put the copies (inside the same mount).
    #[arg(long)]
    dir: PathBuf,
    /// Stop when this path exists.
    #[arg(long)]
    stop: PathBuf,
    #[arg(long)]
    seed: u64,
    /// Copies kept at once; older ones are unlinked.
    #[arg(long, default_value_t = 4)]
    keep: usize,
}

pub fn run(a: &Args) -> Res {
    let mut rng = Rng::new(a.seed);
    let mut live: VecDeque<(PathBuf, Vec<u8>)> = VecDeque::new();
    let (mut clones, mut writes, mut checks) = (0u64, 0u64, 0u64);
    let mut n = 0u64;
    let fail = |what: String, e: &std::io::Error| io_fail(what, e, &a.dir);
    while !a.stop.exists() {
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        match rng.below(10) {
            0..=3 => {
                let dst = a.dir.join(format!("copy{n}"));
                match cp(&a.file, &dst) {
                    Ok(()) => {}
                    // fsx has not created its file yet.
                    Err(e) if errno(&e) == Some(libc::ENOENT) && !a.file.exists() => continue,
                    Err(e) => return Err(fail(format!("cp {}", a.file.display()), &e)),
                }
                n += 1;
                clones += 1;
                let model =
                    fs::read(&dst).map_err(|e| fail(format!("read {}", dst.display()), &e))?;
                live.push_back((dst, model));
                while live.len() > a.keep {
                    if let Some((p, m)) = live.pop_front() {
                        let got =
                            fs::read(&p).map_err(|e| fail(format!("read {}", p.display()), &e))?;
                        compare(&format!("{} before unlink", p.display()), &got, &m)?;
                        fs::remove_file(&p)
                            .map_err(|e| fail(format!("unlink {}", p.display()), &e))?;
                    }
                }
            }
            4..=7 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (p, m) = &mut live[i];
                let (off, len) = write_range(&mut rng, m.len() as u64, 2 << 20);
                let data = rng.bytes(len as usize);
                OpenOptions::new()
                    .write(true)
                    .open(&*p)
                    .and_then(|f| f.write_all_at(&data, off))
                    .map_err(|e| fail(format!("write {}", p.display()), &e))?;
                write_into(m, off, &data);
                writes += 1;
            }
            _ if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let (p, m) = &live[i];
                let got = fs::read(p).map_err(|e| fail(format!("read {}", p.display()), &e))?;
                compare(&p.display().to_string(), &got, m)?;
                checks += 1;
            }
            _ => {}
        }
    }
    for (p, m) in &live {
        let got = fs::read(p).map_err(|e| fail(format!("read {}", p.display()), &e))?;
        compare(&format!("{} at the end", p.display()), &got, m)?;
        checks += 1;
    }
    println!(
        "cloner: {clones} copies of {}, {writes} writes into copies, {checks} whole-copy checks",
        a.file.display()
    );
    Ok(())
}
