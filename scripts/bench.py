#!/usr/bin/env python3
"""Helpers of scripts/bench: workloads timed in-process (no fork per file), deterministic trees,
fio JSON parsing, and the report (medians, ratios to ext4, targets, Markdown table, gnuplot PNG).

Subcommands (times are printed as seconds):
  meta DIR N          create+close, stat, unlink N files; prints the seconds of the three phases
  mkfiles DIR N       create N empty files in DIR (setup, untimed)
  mkfiles-tree DIR N  create N empty files, 1,000 per subdirectory; prints the seconds
  readdir DIR MODE    list DIR (MODE names) or list and stat every entry (MODE stat); prints
                      the seconds and the number of entries
  tree DIR N          a tree of N small files (1..16 KiB, 100 per directory), setup
  mixed DIR NSRC NBUILD MAXMIB
                      a "source + build" tree: NSRC source files of 1..20 KiB in nested
                      directories, symlinks, and NBUILD build outputs of 1..MAXMIB MiB; setup
  fill FILE MIB       write FILE sequentially and fsync it (setup)
  fragfile FILE MIB   write FILE by 4 KiB writes in a random order of its blocks, then fsync;
                      prints the seconds and the number of writes
  fsynclat FILE N     N timed 4 KiB overwrites of FILE, each followed by fsync (after 5 untimed
                      ones); prints the median and the 90th percentile in seconds
  fio-bw JSON         bytes/s and IOPS of a fio JSON result (read + write of the group)
  report TSV OUTDIR NAME   write OUTDIR/NAME.md and OUTDIR/NAME.png from the raw results
"""
import json
import os
import random
import statistics
import subprocess
import sys
import time


def meta(d, n):
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    t1 = time.perf_counter()
    for p in names:
        os.stat(p)
    t2 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t3 = time.perf_counter()
    print(f"{t1 - t0:.6f}\n{t2 - t1:.6f}\n{t3 - t2:.6f}")


def mkfiles(d, n):
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        os.close(os.open(os.path.join(d, f"e{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))


def mkfiles_tree(d, n):
    t0 = time.perf_counter()
    for i in range(n):
        sub = os.path.join(d, f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        os.close(os.open(os.path.join(sub, f"e{i:07d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    print(f"{time.perf_counter() - t0:.6f}")


def readdir(d, mode):
    """names: list the names (ls); stat: list and stat every entry (ls -l)."""
    t0 = time.perf_counter()
    n = 0
    with os.scandir(d) as it:
        for e in it:
            if mode == "stat":
                e.stat(follow_symlinks=False)
            n += 1
    t1 = time.perf_counter()
    print(f"{t1 - t0:.6f}\n{n}")


def tree(d, n):
    # Deterministic names, sizes and bytes, so ext4 and cowfs copy the same tree in every run.
    rng = random.Random(12345)
    for i in range(n):
        sub = os.path.join(d, f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(sub, exist_ok=True)
        size = 1024 + rng.randrange(15 * 1024)
        with open(os.path.join(sub, f"f{i:06d}"), "wb") as f:
            f.write(rng.randbytes(size))


def mixed(d, nsrc, nbuild, max_mib):
    """A project checkout after a build: nested source directories of small files (a few
    executable, a symlink per directory) and a build directory of large outputs."""
    rng = random.Random(4242)
    src = os.path.join(d, "src")
    made = 0
    mod = 0
    while made < nsrc:
        # Modules of 2..4 packages, each of 8..40 files.
        for pkg in range(2 + rng.randrange(3)):
            sub = os.path.join(src, f"mod{mod:03d}", f"pkg{pkg}", "impl" if pkg % 2 else "")
            os.makedirs(sub, exist_ok=True)
            for _ in range(8 + rng.randrange(33)):
                if made == nsrc:
                    break
                p = os.path.join(sub, f"file{made:05d}.rs")
                with open(p, "wb") as f:
                    f.write(rng.randbytes(1024 + rng.randrange(19 * 1024)))
                if made % 97 == 0:
                    os.chmod(p, 0o755)
                made += 1
            os.symlink(os.path.relpath(os.path.join(src, "README"), sub),
                       os.path.join(sub, "README.link"))
        mod += 1
    with open(os.path.join(src, "README"), "wb") as f:
        f.write(b"synthetic source tree for scripts/bench\n")
    build = os.path.join(d, "build", "release", "deps")
    os.makedirs(build, exist_ok=True)
    chunk = rng.randbytes(1 << 20)
    for i in range(nbuild):
        size = (1 << 20) + rng.randrange((max_mib - 1) << 20) if max_mib > 1 else 1 << 20
        with open(os.path.join(build, f"libdep{i:03d}.rlib"), "wb") as f:
            left = size
            while left:
                n = min(left, len(chunk))
                # A different rotation of the chunk per MiB: no two MiB of a file alike.
                k = rng.randrange(len(chunk))
                f.write((chunk[k:] + chunk[:k])[:n])
                left -= n
    os.symlink("release/deps", os.path.join(d, "build", "latest"))


def fill(path, mib):
    chunk = random.Random(99).randbytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def fragfile(path, mib):
    """A file whose every 4 KiB block is written once, in a random order: on a copy-on-write
    store its extent map is one extent per block, in an order unrelated to the file's."""
    rng = random.Random(77)
    blocks = list(range(mib * 256))
    rng.shuffle(blocks)
    pool = rng.randbytes(1 << 20)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for i, b in enumerate(blocks):
            k = (i % 255) * 4096
            os.pwrite(fd, pool[k:k + 4096], b * 4096)
        os.fsync(fd)
        t1 = time.perf_counter()
    finally:
        os.close(fd)
    print(f"{t1 - t0:.6f} {len(blocks)}")


def fsynclat(path, n):
    """The latency a database sees for one small transaction: a 4 KiB overwrite at a random
    block of an existing file, then fsync."""
    rng = random.Random(5)
    fd = os.open(path, os.O_RDWR)
    try:
        blocks = os.fstat(fd).st_size // 4096
        lat = []
        for i in range(n + 5):
            buf = rng.randbytes(4096)
            off = rng.randrange(blocks) * 4096
            t0 = time.perf_counter_ns()
            os.pwrite(fd, buf, off)
            os.fsync(fd)
            t1 = time.perf_counter_ns()
            if i >= 5:
                lat.append((t1 - t0) / 1e9)
    finally:
        os.close(fd)
    lat.sort()
    print(f"{statistics.median(lat):.7f} {lat[int(len(lat) * 0.9)]:.7f}")


def fio_bw(path):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0]
    print(job["read"]["bw_bytes"] + job["write"]["bw_bytes"],
          f'{job["read"]["iops"] + job["write"]["iops"]:.1f}')


# ----------------------------------------------------------------------------- report

def load(tsv):
    rows = {}
    order = []
    with open(tsv) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            key, fs, _rep, value = line.rstrip("\n").split("\t")[:4]
            if key not in order:
                order.append(key)
            rows.setdefault(key, {}).setdefault(fs, []).append(float(value))
    return order, rows


def med(rows, key, fs):
    if "/" in key:
        # A derived figure: the quotient of two medians of the same filesystem.
        a, b = (med(rows, k, fs) for k in key.split("/"))
        return a / b if a is not None and b else None
    v = rows.get(key, {}).get(fs)
    return statistics.median(v) if v else None


class Row:
    """One line of the results table.

    key: the figure (a "a/b" key is the quotient of two figures, per filesystem); ext4: the key
    of the ext4 figure when it is another one (native cp -a beside cowfs snapshot); higher:
    whether a higher figure is better (ratio cowfs / ext4, else ext4 / cowfs); target: None,
    ("ratio", x) (ratio >= x), ("max", x) or ("min", x) (the cowfs figure itself <= or >= x),
    with an optional third element: the target as the issue words it."""

    def __init__(self, key, label, unit, higher=True, target=None, ext4=None):
        self.key, self.label, self.unit, self.higher = key, label, unit, higher
        self.target, self.ext4 = target, ext4 or key


LAT3 = ("ratio", 1 / 3, "<= 3x native latency")
SNAP = ("ratio", 10, "<= 0.1x native cp -a")
TESTS = [
    Row("seqwrite_1M_j1", "seq write 1 MiB, 1 job, end fsync", "MiB/s", True, ("ratio", 0.90)),
    Row("seqread_1M_j1", "seq read 1 MiB, 1 job, cold", "MiB/s", True, ("ratio", 0.95)),
    Row("randread_4k_j1", "rand read 4 KiB, 1 job, cold", "MiB/s", True, ("ratio", 0.80)),
    Row("seqwrite_1M_j4", "seq write 1 MiB, 4 jobs, end fsync", "MiB/s", True, ("ratio", 0.90)),
    Row("seqread_1M_j4", "seq read 1 MiB, 4 jobs, cold", "MiB/s", True, ("ratio", 0.95)),
    Row("randread_4k_j4", "rand read 4 KiB, 4 jobs, cold", "MiB/s", True, ("ratio", 0.80)),
    Row("randwrite_4k_j1_iops", "rand write 4 KiB, {randwrite_size} file, end fsync (IOPS)",
        "IOPS", True, ("ratio", 0.5)),
    Row("randwrite_4k_fsync16_j1_iops", "rand write 4 KiB, fsync every 16 writes (IOPS)",
        "IOPS", True, ("ratio", 0.5)),
    Row("randwrite_4k_j4_iops", "rand write 4 KiB, 4 jobs, end fsync (IOPS)", "IOPS", True,
        ("ratio", 0.5)),
    Row("meta_create", "create {meta_files} files (files/s)", "files/s", True, ("ratio", 0.5)),
    Row("meta_stat", "stat {meta_files} files (files/s)", "files/s", True, ("ratio", 0.5)),
    Row("meta_unlink", "unlink {meta_files} files (files/s)", "files/s", True, ("ratio", 0.5)),
    Row("meta_total", "create+stat+unlink (files/s)", "files/s", True),
    Row("readdir", "readdir, cold (entries/s)", "entries/s", True, ("ratio", 0.30)),
    Row("readdir_stat", "readdir+stat, cold (entries/s)", "entries/s", True, ("ratio", 0.30)),
    Row("cp_small", "cp {cp_small} file (s)", "s", False),
    Row("cp_large", "cp {cp_large} file (s)", "s", False),
    Row("cpa_tree", "cp -a tree of {tree_files} files, in the mount (s)", "s", False,
        ("ratio", 0.5)),
    Row("tarx_tree", "tar x of that tree into the mount (s)", "s", False, ("ratio", 0.5)),
    Row("tarx_mixed", "tar x of a source+build tree ({mixed_tree}) (s)", "s", False,
        ("ratio", 0.5)),
    Row("rsync_mixed", "rsync -a of the same tree (s)", "s", False, ("ratio", 0.5)),
    Row("ov_randread_4k", "overlay lower file, rand read 4 KiB, cold (vs the lower file)",
        "MiB/s", True, ("ratio", 0.95)),
    Row("fsync_lat_empty", "4 KiB overwrite + fsync, empty store (median of {lat_n})", "lat",
        False, LAT3),
    Row("fsync_lat_loaded", "overwrite + fsync, {fsync_files} files + {frag_size} fragmented file",
        "lat", False, LAT3),
    Row("fsync_lat_frag", "overwrite + fsync into the {frag_size} fragmented file", "lat", False,
        LAT3),
    Row("scale_create", "scale: create {scale_files} files, 1,000 per directory (files/s)", "files/s",
        True),
    Row("scale_fragwrite", "scale: write a {scale_frag} file by 4 KiB random writes (IOPS)", "IOPS",
        True),
    Row("scale_lat_empty", "scale: 4 KiB write + fsync, empty store", "lat", False),
    Row("scale_lat_loaded", "scale: write + fsync, {scale_files} files + {scale_frag} fragmented "
        "file", "lat", False),
    Row("scale_lat_frag", "scale: write + fsync into the {scale_frag} fragmented file", "lat",
        False),
    Row("scale_lat_loaded/scale_lat_empty", "scale: write + fsync, loaded / empty store", "x",
        False, ("max", 2.0, "cowfs <= 2x")),
    Row("scale_lat_frag/scale_lat_empty", "scale: write + fsync into the fragmented file / "
        "empty store", "x", False, ("max", 2.0, "cowfs <= 2x")),
    Row("snap_small", "snapshot of {snap_small} files (ext4: native cp -a)", "s", False, SNAP,
        "snapcpa_small"),
    Row("snapcpa_small", "cp -a of the same {snap_small} files", "s", False),
    Row("snap_small_growth", "pool growth by the snapshot", "MiB", False,
        ("max", 0.99, "pool does not grow")),
    Row("snapdel_small", "snapshot --delete of {snap_small} files (ext4: rm -rf)", "s", False),
    Row("snap_large", "snapshot of {snap_large} files (ext4: native cp -a)", "s", False,
        ("max", 2.0, "<= 2 s"), "snapcpa_large"),
    Row("snapcpa_large", "cp -a of the same {snap_large} files", "s", False),
    Row("snap_large_growth", "pool growth by the snapshot", "MiB", False,
        ("max", 0.99, "pool does not grow")),
    Row("snapdel_large", "snapshot --delete of {snap_large} files (ext4: rm -rf)", "s", False,
        ("max", 2.0, "<= 2 s")),
    Row("dedupe_time", "dedupe of two identical {dedupe_size} files (s)", "s", False),
    Row("dedupe_rate", "dedupe speed (MiB of one file per second)", "MiB/s", True,
        ("min", 200, ">= 200 MiB/s")),
    Row("dedupe_back", "dedupe: space given back, share of one file", "%", True,
        ("min", 90, "~all of one file")),
]


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "lat":
        return f"{v * 1000:.3f} ms"
    if unit == "MiB/s":
        return f"{v:.0f}"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit == "%":
        return f"{v:.0f} %"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:,.0f}"


class Subst(dict):
    def __missing__(self, k):
        return "?"


def judge(row, ratio, c):
    """The target column: the target and whether this run met it."""
    t = row.target
    if not t:
        return ""
    kind, x = t[0], t[1]
    if kind == "ratio":
        text, v, ok = (t[2] if len(t) > 2 else f">= {x:.2f}x"), ratio, (ratio or 0) >= x
    elif kind == "max":
        text, v, ok = (t[2] if len(t) > 2 else f"<= {fmt(x, row.unit)}"), c, (c or 0) <= x
    else:
        text, v, ok = (t[2] if len(t) > 2 else f">= {fmt(x, row.unit)}"), c, (c or 0) >= x
    if v is None:
        return text
    return f"{text}: {'met' if ok else '**not met**'}"


def report(tsv, outdir, name):
    order, rows = load(tsv)
    meta_info = {}
    with open(tsv) as f:
        for line in f:
            if line.startswith("#"):
                k, _, v = line[1:].strip().partition("=")
                meta_info[k.strip()] = v.strip()
    sub = Subst(meta_info)
    out = []
    out.append(f"# cowfs vs ext4 ({name})\n")
    out.append(f"Measured by `scripts/bench` on {meta_info.get('date', '?')}"
               f" (commit {meta_info.get('commit', '?')}).\n")
    out.append("## Machine\n")
    for k in ("cpu", "cores", "memory", "kernel", "disk", "host_fs", "mount_opts", "load",
              "idle", "sections", "skipped"):
        if k in meta_info:
            out.append(f"- {k.replace('_', ' ')}: {meta_info[k]}")
    out.append("")
    out.append(f"fio: psync, buffered I/O, cold caches (caches dropped and cowfs remounted before "
               f"every run), {meta_info.get('fio_size', '?')} per run in total for sequential "
               f"I/O and random reads, {meta_info.get('randwrite_size', '?')} for random writes; "
               f"writes end with fsync. Every figure is the median of "
               f"{meta_info.get('reps', '?')} runs; cowfs and ext4 runs alternate. Ratio = "
               f"cowfs / ext4 for rates, ext4 / cowfs for times and latencies (above 1: cowfs "
               f"is better). Targets are those of issues 12 and 13.\n")
    out.append("| test | ext4 | cowfs | ratio | target |")
    out.append("|---|---:|---:|---:|---|")
    plot = []
    for row in TESTS:
        e, c = med(rows, row.ext4, "ext4"), med(rows, row.key, "cowfs")
        if e is None and c is None:
            continue
        label = row.label.format_map(sub)
        ratio = None
        if e and c and "/" not in row.key:
            ratio = c / e if row.higher else e / c
        out.append(f"| {label} | {fmt(e, row.unit)} | {fmt(c, row.unit)} | "
                   f"{'-' if ratio is None else f'{ratio:.2f}x'} | {judge(row, ratio, c)} |")
        if ratio is not None:
            t = row.target
            plot.append((label, ratio, t[1] if t and t[0] == "ratio" else 0))
    out.append("")

    if med(rows, "cp_small", "cowfs") is not None:
        out.append("## Copies (reflink)\n")
        out.append("| file | cowfs cp | ext4 cp | ext4 cp + sync | XFS reflink cp | cowfs store growth |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for k in ("cp_small", "cp_large"):
            out.append(f"| {meta_info.get(k, '?')} | {fmt(med(rows, k, 'cowfs'), 's')} | "
                       f"{fmt(med(rows, k, 'ext4'), 's')} | {fmt(med(rows, k + '_sync', 'ext4'), 's')} | "
                       f"{fmt(med(rows, k, 'xfs'), 's')} | "
                       f"{fmt(med(rows, k + '_growth', 'cowfs'), 'MiB')} |")
        s, l = med(rows, "cp_small", "cowfs"), med(rows, "cp_large", "cowfs")
        if s and l:
            out.append(f"\ncowfs: the large copy takes {l / s:.2f}x the time of the small one "
                       f"(target <= 1.5x; small target <= 5 ms: {s * 1000:.1f} ms).")
        out.append("")

    if med(rows, "seqread_1M_j1", "cowfs-splice") is not None:
        out.append("## Read path: splice vs buffered (cowfs, cold)\n")
        out.append("| test | splice | buffered | buffered / splice | daemon CPU s, splice | daemon CPU s, buffered |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for k, label in (("seqread_1M_j1", "seq read 1 MiB"), ("randread_4k_j1", "rand read 4 KiB")):
            sp, bu = med(rows, k, "cowfs-splice"), med(rows, k, "cowfs-buffered")
            cs, cb = med(rows, k + "_cpu", "cowfs-splice"), med(rows, k + "_cpu", "cowfs-buffered")
            r = f"{bu / sp:.2f}x" if sp and bu else "-"
            out.append(f"| {label} (MiB/s) | {fmt(sp, 'MiB/s')} | {fmt(bu, 'MiB/s')} | {r} | "
                       f"{'-' if cs is None else f'{cs:.2f}'} | {'-' if cb is None else f'{cb:.2f}'} |")
        out.append("")

    out.append("## Daemon memory (peak RSS, VmHWM)\n")
    out.append("| phase | peak RSS | target |")
    out.append("|---|---:|---|")
    for k, label in (("rss_write_large", f"writing a {meta_info.get('cp_large', '?')} file"),
                     ("rss_create_many", f"creating {meta_info.get('many_files', '?')} files"),
                     ("rss_create_scale", f"creating {meta_info.get('scale_files', '?')} files, then a "
                                          f"{meta_info.get('scale_frag', '?')} file (scale)"),
                     ("rss_peak", "whole run (largest of all mounts)")):
        v = med(rows, k, "cowfs")
        if v is None:
            continue
        out.append(f"| {label} | {fmt(v, 'MiB')} | < 256 MiB: {'met' if v < 256 else '**not met**'} |")
    out.append("")
    out.append("Raw results (every run): `" + name + ".tsv`.\n")
    with open(os.path.join(outdir, name + ".md"), "w") as f:
        f.write("\n".join(out))

    # The plot: one bar per test, the ratio to ext4, target marks.
    dat = os.path.join(outdir, name + ".dat")
    with open(dat, "w") as f:
        for i, (label, ratio, target) in enumerate(plot):
            label = label.replace('"', "'")
            f.write(f'{i}\t"{label}"\t{ratio:.4f}\t{target:.2f}\n')
    top = max([r for _, r, _ in plot] + [1.2])
    width = max(1200, 40 * len(plot) + 300)
    script = f"""
set terminal pngcairo size {width},800 font ",10"
set output "{os.path.join(outdir, name + '.png')}"
set title "cowfs / ext4 (same disk, same run; above 1 = cowfs better) - {name}"
set style fill solid 0.8 border -1
set boxwidth 0.6
set logscale y 10
set yrange [0.005:{max(top * 1.3, 2):.2f}]
set ylabel "ratio to ext4 (log scale)"
set xtics rotate by 35 right nomirror
set bmargin 16
set lmargin 24
set grid ytics
set key top left
plot "{dat}" using 1:3:xtic(2) with boxes lc rgb "#4a7ab0" title "cowfs / ext4", \\
     "" using 1:($4 > 0 ? $4 : 1/0) with points pt 7 ps 1.5 lc rgb "#c03030" title "target", \\
     1 with lines dt 2 lc rgb "black" title "parity"
"""
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"bench: no plot ({e})", file=sys.stderr)
    os.unlink(dat)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "meta":
        meta(args[0], int(args[1]))
    elif cmd == "mkfiles":
        mkfiles(args[0], int(args[1]))
    elif cmd == "mkfiles-tree":
        mkfiles_tree(args[0], int(args[1]))
    elif cmd == "readdir":
        readdir(args[0], args[1])
    elif cmd == "tree":
        tree(args[0], int(args[1]))
    elif cmd == "mixed":
        mixed(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "fill":
        fill(args[0], int(args[1]))
    elif cmd == "fragfile":
        fragfile(args[0], int(args[1]))
    elif cmd == "fsynclat":
        fsynclat(args[0], int(args[1]))
    elif cmd == "fio-bw":
        fio_bw(args[0])
    elif cmd == "report":
        report(args[0], args[1], args[2])
    else:
        sys.exit(f"bench.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
