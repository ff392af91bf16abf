//! The zero-copy read reply: a `fuse_out_header` and the file's bytes go to `/dev/fuse` through a
//! per-thread pipe, the bytes spliced from the pool file's page cache (holes from a shared zero
//! page), so they never pass through a userspace buffer.
//!
//! The kernel takes a reply from a pipe only whole: one `splice` of exactly `header.len` bytes,
//! all of which must already sit in the pipe. So the pipe must hold header + data; a reply that
//! might not fit is left to the caller's buffered path.

use crate::sys::{self, PAGE};
use cowstore::Segment;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `struct fuse_out_header` {len: u32, error: i32, unique: u64}, in host byte order.
pub const OUT_HEADER_LEN: usize = 16;

/// Bytes we ask the pipe to hold: a 1 MiB read (the largest FUSE sends with 256 pages) plus the
/// header page and slack for unaligned segments; the kernel rounds up to a power of two pages.
const WANT_PIPE_BYTES: usize = (1 << 20) + 64 * PAGE;

struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    /// Buffers (pages) the pipe can hold.
    slots: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (rd, wr) = sys::pipe()?;
        let granted = match sys::set_pipe_size(wr.as_fd(), WANT_PIPE_BYTES) {
            Ok(n) => n,
            // Unprivileged callers are capped at /proc/sys/fs/pipe-max-size.
            Err(_) => sys::set_pipe_size(wr.as_fd(), 1 << 20)
                .or_else(|_| sys::set_pipe_size(wr.as_fd(), 16 * PAGE))?,
        };
        Ok(Pipe {
            rd,
            wr,
            slots: granted / PAGE,
        })
    }
}

/// The largest read reply (data bytes) a pipe of this process can carry whole: the pipe's
/// capacity less the header's page. Unprivileged (and capability-less root) pipes stop at
/// /proc/sys/fs/pipe-max-size, 1 MiB by default, so a 1 MiB read would not fit.
pub fn max_reply_data() -> io::Result<usize> {
    let p = Pipe::new()?;
    Ok(p.slots.saturating_sub(1) * PAGE)
}

thread_local! {
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

/// Why a spliced reply was not sent.
#[derive(Debug)]
pub enum SpliceError {
    /// Nothing reached the device; the caller can still answer another way.
    NotSent(io::Error),
    /// The device refused the reply (e.g. the request was interrupted); it cannot be answered.
    Device(io::Error),
}

/// Pipe buffers (one page each at most) a reply of these segments takes: the header's, the
/// pages each pool range spans, and the zero pages of each hole ([`zeros`] references whole
/// pages of the page-aligned [`sys::ZEROS`] from its start, so `len` bytes take
/// `ceil(len / PAGE)` buffers).
fn slots_needed(segs: &[Segment]) -> usize {
    1 + segs
        .iter()
        .map(|s| match *s {
            Segment::Pool { pos, len } | Segment::Lower { pos, len, .. } => {
                ((pos as usize % PAGE) + len as usize).div_ceil(PAGE)
            }
            Segment::Hole { len } => (len as usize).div_ceil(PAGE),
        })
        .sum::<usize>()
}

/// Whether a reply of these segments fits this thread's pipe (creating the pipe if needed).
pub fn fits(segs: &[Segment]) -> io::Result<bool> {
    let need = slots_needed(segs);
    PIPE.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Some(Pipe::new()?);
        }
        Ok(p.as_ref().is_some_and(|p| need <= p.slots))
    })
}

/// Send the reply to request `unique`: header, then each segment from `pool` (or zeros), then
/// one splice into `dev`. Returns the data bytes sent.
/// The bytes of a read reply: segments, and the open lower files `Segment::Lower` names.
pub trait ReadSource {
    fn segments(&self) -> &[Segment];
    fn lower(&self, file: u64) -> Option<BorrowedFd<'_>>;
}

impl ReadSource for cowstore::PinnedRead {
    fn segments(&self) -> &[Segment] {
        self
    }
    fn lower(&self, file: u64) -> Option<BorrowedFd<'_>> {
        self.lower_file(file).map(|f| f.as_fd())
    }
}

impl ReadSource for [Segment] {
    fn segments(&self) -> &[Segment] {
        self
    }
    fn lower(&self, _file: u64) -> Option<BorrowedFd<'_>> {
        None
    }
}

pub fn reply(
    dev: BorrowedFd<'_>,
    unique: u64,
    pool: BorrowedFd<'_>,
    segs: &(impl ReadSource + ?Sized),
) -> Result<u64, SpliceError> {
    PIPE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Pipe::new().map_err(SpliceError::NotSent)?);
        }
        let Some(pipe) = slot.as_ref() else {
            return Err(SpliceError::NotSent(io::Error::other("no pipe")));
        };
        let result = fill_and_send(pipe, dev, unique, pool, segs);
        if result.is_err() {
            // The pipe may hold part of a reply: drop it rather than drain it.
            *slot = None;
        }
        result
    })
}

fn fill_and_send(
    pipe: &Pipe,
    dev: BorrowedFd<'_>,
    unique: u64,
    pool: BorrowedFd<'_>,
    read: &(impl ReadSource + ?Sized),
) -> Result<u64, SpliceError> {
    let segs: &[Segment] = read.segments();
    let data: u64 = segs.iter().map(Segment::len).sum();
    let total = OUT_HEADER_LEN as u64 + data;
    let total32 = u32::try_from(total)
        .map_err(|_| SpliceError::NotSent(io::Error::from_raw_os_error(libc::EFBIG)))?;
    let mut header = [0u8; OUT_HEADER_LEN];
    header[0..4].copy_from_slice(&total32.to_ne_bytes());
    header[4..8].copy_from_slice(&0i32.to_ne_bytes());
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    let wr = pipe.wr.as_fd();
    let n = sys::write(wr, &header).map_err(SpliceError::NotSent)?;
    if n != OUT_HEADER_LEN {
        return Err(SpliceError::NotSent(io::Error::other(
            "short write of the reply header",
        )));
    }
    for seg in segs {
        let (src, pos, len) = match *seg {
            Segment::Hole { len } => {
                zeros(wr, len)?;
                continue;
            }
            Segment::Pool { pos, len } => (pool, pos, len),
            // Overlay: unmodified lower data is spliced straight from the lower file.
            Segment::Lower { file, pos, len } => {
                let f = read.lower(file).ok_or_else(|| {
                    SpliceError::NotSent(io::Error::other("lower file of a read is not open"))
                })?;
                (f, pos, len)
            }
        };
        let mut off = pos;
        let end = pos + len;
        while off < end {
            let want = (end - off).min(1 << 30) as usize;
            match sys::splice_from_file(src, &mut off, wr, want) {
                // Past the file's end: unwritten space, which reads as zeros.
                Ok(0) => {
                    zeros(wr, end - off)?;
                    off = end;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SpliceError::NotSent(e)),
            }
        }
    }
    loop {
        match sys::splice_from_pipe(pipe.rd.as_fd(), dev, total as usize) {
            Ok(n) if n as u64 == total => return Ok(data),
            Ok(n) => {
                return Err(SpliceError::Device(io::Error::other(format!(
                    "device took {n} of {total} reply bytes"
                ))))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpliceError::Device(e)),
        }
    }
}

fn zeros(wr: BorrowedFd<'_>, len: u64) -> Result<(), SpliceError> {
    let mut left = len;
    while left > 0 {
        match sys::vmsplice_zeros(wr, left.min(usize::MAX as u64) as usize) {
            Ok(0) => return Err(SpliceError::NotSent(io::Error::other("pipe full"))),
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpliceError::NotSent(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    /// Fill a pipe as a reply would and read it back: header, file bytes, zeros, file tail past
    /// EOF as zeros. A second pipe stands in for /dev/fuse.
    #[test]
    fn reply_bytes_are_header_then_segments() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("cowfs-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pool");
        let f = std::fs::File::create(&path)?;
        let bytes: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&bytes, 0)?;
        let pool = std::fs::File::open(&path)?;
        let segs = [
            Segment::Pool {
                pos: 100,
                len: 5000,
            },
            Segment::Hole { len: 7000 },
            Segment::Pool {
                pos: 3 * PAGE as u64 - 10,
                len: 30,
            },
        ];
        assert!(fits(&segs)?);
        let (dev_rd, dev_wr) = sys::pipe()?;
        sys::set_pipe_size(dev_wr.as_fd(), 1 << 20)?;
        let sent = reply(dev_wr.as_fd(), 0xabcdef, pool.as_fd(), &segs[..])
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        assert_eq!(sent, 12_030);
        drop(dev_wr);
        let mut got = Vec::new();
        std::fs::File::from(dev_rd).read_to_end(&mut got)?;
        assert_eq!(got.len(), OUT_HEADER_LEN + 12_030);
        assert_eq!(&got[0..4], &(OUT_HEADER_LEN as u32 + 12_030).to_ne_bytes());
        assert_eq!(&got[4..8], &[0; 4]);
        assert_eq!(&got[8..16], &0xabcdefu64.to_ne_bytes());
        let body = &got[OUT_HEADER_LEN..];
        assert_eq!(&body[..5000], &bytes[100..5100]);
        assert!(body[5000..12_000].iter().all(|&b| b == 0));
        assert_eq!(&body[12_000..12_010], &bytes[3 * PAGE - 10..]);
        assert!(
            body[12_010..].iter().all(|&b| b == 0),
            "past the pool's end reads as zeros"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn slots_are_counted_exactly() {
        let aligned = [Segment::Pool {
            pos: 8192,
            len: 255 * PAGE as u64,
        }];
        assert_eq!(slots_needed(&aligned), 256);
        let hole = [Segment::Hole {
            len: 255 * PAGE as u64,
        }];
        assert_eq!(slots_needed(&hole), 256);
        let unaligned = [
            Segment::Pool {
                pos: 100,
                len: PAGE as u64,
            },
            Segment::Hole { len: 1 },
        ];
        assert_eq!(slots_needed(&unaligned), 1 + 2 + 1);
    }

    #[test]
    fn many_small_segments_do_not_fit() -> io::Result<()> {
        let segs: Vec<Segment> = (0..2000)
            .map(|i| Segment::Pool {
                pos: i * 8192 + 1,
                len: 2,
            })
            .collect();
        assert!(!fits(&segs)?);
        Ok(())
    }
}
