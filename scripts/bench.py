#!/usr/bin/env python3
"""Helpers of scripts/bench: metadata workloads timed in-process (no fork per file), fio JSON
parsing, and the report (medians, ratios to ext4, Markdown table, gnuplot PNG).

Subcommands (times are printed as seconds, one number per line):
  meta DIR N          create+close, stat, unlink N files; prints the seconds of the three phases
  mkfiles DIR N       create N empty files (setup, untimed)
  readdir DIR MODE    list DIR (MODE names) or list and stat every entry (MODE stat); prints
                      the seconds and the number of entries
  tree DIR N          a tree of N small files (1..16 KiB, 100 per directory), setup
  fio-bw JSON         bytes/s of a fio JSON result (read + write of the group)
  report TSV OUTDIR NAME   write OUTDIR/NAME.md and OUTDIR/NAME.png from the raw results
"""
import json
import os
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
    # Deterministic sizes, so ext4 and cowfs copy the same bytes.
    rnd = 12345
    for i in range(n):
        sub = os.path.join(d, f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(sub, exist_ok=True)
        rnd = (rnd * 1103515245 + 12345) & 0x7FFFFFFF
        size = 1024 + rnd % (15 * 1024)
        with open(os.path.join(sub, f"f{i:06d}"), "wb") as f:
            f.write(os.urandom(size))


def fio_bw(path):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0]
    print(job["read"]["bw_bytes"] + job["write"]["bw_bytes"])


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
    v = rows.get(key, {}).get(fs)
    return statistics.median(v) if v else None


# (key, label, unit, higher_is_better, target ratio or None)
TESTS = [
    ("seqwrite_1M_j1", "seq write 1 MiB, 1 job", "MiB/s", True, 0.70),
    ("seqread_1M_j1", "seq read 1 MiB, 1 job", "MiB/s", True, 0.85),
    ("randread_4k_j1", "rand read 4 KiB, 1 job", "MiB/s", True, 0.80),
    ("randwrite_4k_j1", "rand write 4 KiB, 1 job", "MiB/s", True, None),
    ("seqwrite_1M_j4", "seq write 1 MiB, 4 jobs", "MiB/s", True, 0.70),
    ("seqread_1M_j4", "seq read 1 MiB, 4 jobs", "MiB/s", True, 0.85),
    ("randread_4k_j4", "rand read 4 KiB, 4 jobs", "MiB/s", True, 0.80),
    ("randwrite_4k_j4", "rand write 4 KiB, 4 jobs", "MiB/s", True, None),
    ("meta_create", "create (files/s)", "files/s", True, 0.30),
    ("meta_stat", "stat (files/s)", "files/s", True, 0.30),
    ("meta_unlink", "unlink (files/s)", "files/s", True, 0.30),
    ("meta_total", "create+stat+unlink (files/s)", "files/s", True, 0.30),
    ("readdir", "readdir, cold (entries/s)", "entries/s", True, 0.30),
    ("readdir_stat", "readdir+stat, cold (entries/s)", "entries/s", True, 0.30),
    ("cp_small", "cp SMALL file (s)", "s", False, None),
    ("cp_large", "cp LARGE file (s)", "s", False, None),
    ("cpa_tree", "cp -a tree of TREE files (s)", "s", False, None),
]


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "MiB/s":
        return f"{v:.0f}"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    return f"{v:,.0f}"


def report(tsv, outdir, name):
    order, rows = load(tsv)
    meta_info = {}
    with open(tsv) as f:
        for line in f:
            if line.startswith("#"):
                k, _, v = line[1:].strip().partition("=")
                meta_info[k.strip()] = v.strip()
    sub = {"SMALL": meta_info.get("cp_small", "?"), "LARGE": meta_info.get("cp_large", "?"),
           "TREE": meta_info.get("tree_files", "?")}
    out = []
    out.append(f"# cowfs vs ext4 ({name})\n")
    out.append(f"Measured by `scripts/bench` on {meta_info.get('date', '?')}"
               f" (commit {meta_info.get('commit', '?')}).\n")
    out.append("## Machine\n")
    for k in ("cpu", "cores", "memory", "kernel", "disk", "host_fs", "mount_opts", "load"):
        if k in meta_info:
            out.append(f"- {k.replace('_', ' ')}: {meta_info[k]}")
    out.append("")
    out.append(f"fio: psync, buffered I/O, cold caches (caches dropped and cowfs remounted before "
               f"every run), {meta_info.get('fio_size', '?')} per run in total, writes end with "
               f"fsync. Every figure is the median of {meta_info.get('reps', '?')} runs; cowfs "
               f"and ext4 runs alternate. Ratio = cowfs / ext4 for rates, ext4 / cowfs for "
               f"times (above 1: cowfs is better).\n")
    out.append("| test | ext4 | cowfs | ratio | target |")
    out.append("|---|---:|---:|---:|---|")
    plot = []
    for key, label, unit, higher, target in TESTS:
        e, c = med(rows, key, "ext4"), med(rows, key, "cowfs")
        if e is None and c is None:
            continue
        for k, v in sub.items():
            label = label.replace(k, v)
        ratio = None
        if e and c:
            ratio = c / e if higher else e / c
        tgt = f">= {target:.2f}x" if target else ""
        met = ""
        if target and ratio is not None:
            met = " met" if ratio >= target else " **missed**"
        out.append(f"| {label} | {fmt(e, unit)} | {fmt(c, unit)} | "
                   f"{'-' if ratio is None else f'{ratio:.2f}x'} | {tgt}{met} |")
        if ratio is not None:
            plot.append((label, ratio, target or 0))
    out.append("")

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
                     ("rss_peak", "whole run (largest of all mounts)")):
        v = med(rows, k, "cowfs")
        t = ""
        if v is not None:
            t = "< 256 MiB " + ("met" if v < 256 else "**missed**")
        out.append(f"| {label} | {fmt(v, 'MiB')} | {t} |")
    out.append("")
    out.append("Raw results (every run): `" + name + ".tsv`.\n")
    with open(os.path.join(outdir, name + ".md"), "w") as f:
        f.write("\n".join(out))

    # The plot: one bar per test, the ratio to ext4, target marks.
    dat = os.path.join(outdir, name + ".dat")
    with open(dat, "w") as f:
        for i, (label, ratio, target) in enumerate(plot):
            f.write(f'{i}\t"{label}"\t{ratio:.4f}\t{target:.2f}\n')
    top = max([r for _, r, _ in plot] + [1.2])
    script = f"""
set terminal pngcairo size 1200,700 font ",10"
set output "{os.path.join(outdir, name + '.png')}"
set title "cowfs / ext4 (same disk, same run; above 1 = cowfs better) - {name}"
set style fill solid 0.8 border -1
set boxwidth 0.6
set yrange [0:{min(top * 1.1, 10):.2f}]
set logscale y 10
set yrange [0.01:{max(top * 1.3, 2):.2f}]
set ylabel "ratio to ext4 (log scale)"
set xtics rotate by 35 right nomirror
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
    elif cmd == "readdir":
        readdir(args[0], args[1])
    elif cmd == "tree":
        tree(args[0], int(args[1]))
    elif cmd == "fio-bw":
        fio_bw(args[0])
    elif cmd == "report":
        report(args[0], args[1], args[2])
    else:
        sys.exit(f"bench.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
