#!/usr/bin/env python3
"""Metadata micro-benchmark for scripts/uring-probe: the same loop on every target.

  probe.py run LABEL DIR DAEMON_PID PHASES OUT.tsv   append one row per phase to OUT.tsv
  probe.py table OUT.tsv                             print the summary table (Markdown)

PHASES is a comma list of:
  fstat   fstat() of one open file, N_STAT times: with attr_timeout=0 exactly one GETATTR each
  stat    stat() of one path, N_STAT times: with entry+attr timeout 0, LOOKUP + GETATTR each
  create  open(O_CREAT|O_EXCL|O_WRONLY) + close() of N_FILES new files
  lstat   stat() of each of them (whatever the mount's timeouts make of it)
  unlink  unlink() of each of them
DAEMON_PID is the FUSE daemon (its utime+stime, all threads, is sampled around each phase), or 0.
With PROBE_COUNT_LOG=FILE (the daemon's -d log), each phase also prints the FUSE requests it
caused per operation, by opcode (it waits 0.3 s after the phase for asynchronous RELEASE/FORGET).
Benchmarks are not tests: nothing here asserts a timing.
"""

import os
import sys
import time

N_STAT = int(os.environ.get("PROBE_N_STAT", "20000"))
N_FILES = int(os.environ.get("PROBE_N_FILES", "5000"))
TICK = os.sysconf("SC_CLK_TCK")


def daemon_cpu(pid):
    """utime+stime of process PID (all its threads) in seconds, or 0.0 without a daemon."""
    if pid == 0:
        return 0.0
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the ")" that closes comm: state is field 3, utime 14, stime 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def opcodes(log):
    """Number of requests of each opcode in a libfuse debug log so far."""
    counts = {}
    with open(log, errors="replace") as f:
        for line in f:
            at = line.find("opcode: ")
            if at >= 0:
                op = line[at + 8 :].split(",")[0].split(" (")[0].strip()
                counts[op] = counts.get(op, 0) + 1
    return counts


def client_cpu():
    t = os.times()
    return t.user + t.system


def phase_fstat(d, _names):
    path = os.path.join(d, "probe-stat")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.fstat(fd)
        yield
        for _ in range(N_STAT):
            os.fstat(fd)
    finally:
        os.close(fd)
    yield N_STAT


def phase_stat(d, _names):
    path = os.path.join(d, "probe-stat")
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o644))
    os.stat(path)
    yield
    for _ in range(N_STAT):
        os.stat(path)
    yield N_STAT


def phase_create(_d, names):
    yield
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    for n in names:
        os.close(os.open(n, flags, 0o644))
    yield len(names)


def phase_lstat(_d, names):
    yield
    for n in names:
        os.stat(n)
    yield len(names)


def phase_unlink(_d, names):
    yield
    for n in names:
        os.unlink(n)
    yield len(names)


PHASES = {
    "fstat": phase_fstat,
    "stat": phase_stat,
    "create": phase_create,
    "lstat": phase_lstat,
    "unlink": phase_unlink,
}


def run(label, d, pid, phases, out):
    sub = os.path.join(d, "files")
    os.makedirs(sub, exist_ok=True)
    names = [os.path.join(sub, f"f{i:05d}") for i in range(N_FILES)]
    rows = []
    count_log = os.environ.get("PROBE_COUNT_LOG")
    for phase in phases.split(","):
        gen = PHASES[phase](d, names)
        next(gen)  # setup done
        if count_log:
            time.sleep(0.3)
            before = opcodes(count_log)
        c0, d0, t0 = client_cpu(), daemon_cpu(pid), time.perf_counter()
        ops = next(gen)
        t1, c1, d1 = time.perf_counter(), client_cpu(), daemon_cpu(pid)
        gen.close()
        secs = t1 - t0
        if count_log:
            time.sleep(0.3)
            after = opcodes(count_log)
            per = {k: (after[k] - before.get(k, 0)) / ops for k in after}
            trips = " + ".join(f"{v:.2f} {k}" for k, v in sorted(per.items()) if v >= 0.005)
            total = sum(per.values())
            print(f"  {label:14} {phase:7} requests/op: {total:.2f} = {trips}", flush=True)
            continue
        rows.append((label, phase, ops, secs, c1 - c0, d1 - d0))
        print(
            f"  {label:14} {phase:7} {ops / secs:9.0f} ops/s {secs / ops * 1e6:8.2f} us/op"
            f"  client cpu {(c1 - c0) / ops * 1e6:6.2f} us/op"
            f"  daemon cpu {(d1 - d0) / ops * 1e6:6.2f} us/op",
            flush=True,
        )
    with open(out, "a") as f:
        for r in rows:
            f.write("%s\t%s\t%d\t%.6f\t%.4f\t%.4f\n" % r)


def table(path):
    runs = {}
    order = []
    with open(path) as f:
        for line in f:
            label, phase, ops, secs, ccpu, dcpu = line.rstrip("\n").split("\t")
            key = (label, phase)
            if key not in runs:
                runs[key] = []
                order.append(key)
            runs[key].append((int(ops), float(secs), float(ccpu), float(dcpu)))
    print(
        "| target | phase | best us/op | best ops/s | median us/op | each run: us/op "
        "| client CPU us/op | daemon CPU us/op |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in order:
        rs = runs[key]
        us = " / ".join(f"{s / n * 1e6:.2f}" for n, s, _, _ in rs)
        ccpu = " / ".join(f"{c / n * 1e6:.1f}" for n, _, c, _ in rs)
        dcpu = " / ".join(f"{d / n * 1e6:.1f}" for n, _, _, d in rs)
        n, s = min(rs, key=lambda r: r[1] / r[0])[:2]
        per = sorted(s / n * 1e6 for n, s, _, _ in rs)
        mid = len(per) // 2
        median = per[mid] if len(per) % 2 else (per[mid - 1] + per[mid]) / 2
        best = f"{s / n * 1e6:.2f} | {n / s:.0f} | {median:.2f}"
        print(f"| {key[0]} | {key[1]} | {best} | {us} | {ccpu} | {dcpu} |")


def main(argv):
    if len(argv) == 7 and argv[1] == "run":
        run(argv[2], argv[3], int(argv[4]), argv[5], argv[6])
    elif len(argv) == 3 and argv[1] == "table":
        table(argv[2])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
