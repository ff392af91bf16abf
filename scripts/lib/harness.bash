# shellcheck shell=bash
# Shared by scripts/conformance, killtest, enospc and concurrency (sourced, not run).
#
# Every daemon is started in the foreground (`cowfs mount -f`) as a child of the script, so the
# script can SIGKILL and reap it; h_cleanup (the EXIT trap) unmounts every mount it made,
# innermost first, kills and reaps every daemon still running, and removes the work directory
# (kept, with the daemon logs, when the script failed).
#
# Environment: COWFS, STRESS (binaries; built with cargo --release when unset), KEEP_WORK=1,
# COWFS_OPTS (mount options put before every mount's own, e.g. no_writeback_cache).

declare -A H_PID=()  # mountpoint -> daemon pid
H_MOUNTS=()          # every mountpoint we made, in order (FUSE and host filesystems)
H_NAME=${H_NAME:-$(basename "$0")}
H_START=$SECONDS

h_log() { printf '%s [%4ds] %s\n' "$H_NAME" $((SECONDS - H_START)) "$*"; }
h_fail() {
    printf '%s: FAILED: %s\n' "$H_NAME" "$*" >&2
    exit 1
}

# Set up WORK, COWFS, STRESS and the EXIT trap.
h_init() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    export PATH="$HOME/.cargo/bin:$PATH"
    if [[ -z ${COWFS:-} || -z ${STRESS:-} ]]; then
        h_log "building cowfs and cowfs-stress (cargo build --release)"
        (cd "$root" && cargo build --release -q -p cowfs-tools -p cowfs-stress) ||
            h_fail "cargo build failed"
        : "${COWFS:=$root/target/release/cowfs}" "${STRESS:=$root/target/release/cowfs-stress}"
    fi
    export COWFS STRESS
    [[ -x $COWFS && -x $STRESS ]] || h_fail "missing binaries: COWFS=$COWFS STRESS=$STRESS"
    [[ $(id -u) -eq 0 ]] || h_fail "must run as root (mounts, allow_other, tmpfs)"
    [[ -e /dev/fuse ]] || h_fail "/dev/fuse is missing"
    WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cowfs-$H_NAME.XXXXXX")
    # Tests that switch to unprivileged users (pjdfstest) must be able to reach the mounts.
    chmod 755 "$WORK"
    trap h_cleanup EXIT
    trap 'exit 130' INT TERM
}

h_cleanup() {
    local rc=$? i mnt pid daemons
    set +e
    # Workloads first, so none writes into a bare mountpoint once its mount is detached.
    daemons=" ${H_PID[*]} "
    for pid in $(jobs -p); do
        [[ $daemons == *" $pid "* ]] && continue
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for ((i = ${#H_MOUNTS[@]} - 1; i >= 0; i--)); do
        mnt=${H_MOUNTS[i]}
        if h_is_mounted "$mnt"; then
            if [[ -n ${H_PID[$mnt]:-} ]] && kill -0 "${H_PID[$mnt]}" 2>/dev/null; then
                timeout 60 "$COWFS" umount --timeout 30 "$mnt" >/dev/null 2>&1 ||
                    umount -l "$mnt"
            else
                umount -l "$mnt"
            fi
        fi
        pid=${H_PID[$mnt]:-}
        if [[ -n $pid ]]; then
            kill -9 "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    # Any child left.
    for pid in $(jobs -p); do
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if ((rc == 0)) && [[ -z ${KEEP_WORK:-} ]]; then
            rm -rf "$WORK"
        else
            echo "$H_NAME: work directory kept: $WORK (daemon logs: $WORK/*.log)" >&2
        fi
    fi
    exit "$rc"
}

h_is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

# h_mount STORE MNT [OPTS [ARGS...]]: serve STORE at MNT (more `cowfs mount` arguments, such
# as --lower DIR, after OPTS); returns once the mount answers.
h_mount() {
    local store=$1 mnt=$2 opts=${COWFS_OPTS:+$COWFS_OPTS,}${3:-} log pid i
    log="$WORK/daemon-$(basename "$mnt").log"
    local args=(mount -f "$store" "$mnt" "${@:4}")
    [[ -n $opts ]] && args+=(-o "$opts")
    "$COWFS" "${args[@]}" >>"$log" 2>&1 &
    pid=$!
    H_PID[$mnt]=$pid
    h_track "$mnt"
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            tail -n 20 "$log" >&2
            h_fail "the daemon for $mnt exited before the mount was live"
        fi
        if h_is_mounted "$mnt" && "$COWFS" stats "$mnt" >/dev/null 2>"$WORK/stats.err"; then
            return 0
        fi
        sleep 0.05
    done
    echo "last 'cowfs stats $mnt': $(cat "$WORK/stats.err")" >&2
    grep " $mnt " /proc/self/mountinfo >&2 || true
    h_dump_daemon "$mnt"
    h_fail "$mnt not live after 600 tries"
}

# h_dump_daemon MNT: the daemon's threads and where they wait (for hangs).
h_dump_daemon() {
    local pid=${H_PID[$1]:-} t
    [[ -n $pid ]] || return 0
    echo "--- daemon $pid of $1: threads (name, wchan, kernel stack) ---" >&2
    for t in /proc/"$pid"/task/*; do
        echo "$(cat "$t/comm" 2>/dev/null) $(cat "$t/wchan" 2>/dev/null)" >&2
        cat "$t/stack" >&2 2>/dev/null || true
    done
}

h_track() {
    local m
    for m in "${H_MOUNTS[@]}"; do [[ $m == "$1" ]] && return 0; done
    H_MOUNTS+=("$1")
}

h_pid() { echo "${H_PID[$1]}"; }

# h_umount MNT: `cowfs umount` (commits), then the daemon must exit 0.
h_umount() {
    local mnt=$1 pid=${H_PID[$1]} rc=0
    timeout 120 "$COWFS" umount "$mnt" || h_fail "cowfs umount $mnt failed"
    wait "$pid" || rc=$?
    unset "H_PID[$mnt]"
    ((rc == 0)) || h_fail "the daemon of $mnt exited with status $rc (log: $WORK/daemon-$(basename "$mnt").log)"
}

# h_kill MNT: SIGKILL the daemon, reap it, detach the dead mount.
h_kill() {
    local mnt=$1 pid=${H_PID[$1]}
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    unset "H_PID[$mnt]"
    umount -l "$mnt"
}

# h_fsck STORE: must be clean without repair (exit 0).
h_fsck() {
    local out rc=0
    out=$("$COWFS" fsck "$1" 2>&1) || rc=$?
    ((rc == 0)) || h_fail "cowfs fsck $1 exited $rc: $out"
    h_log "fsck: $out"
}

# h_counter MNT NAME: a daemon counter from `cowfs stats --json`.
h_counter() {
    "$COWFS" stats "$1" --json | sed -n "s/^ *\"$2\": *\([0-9]*\).*/\1/p"
}

# h_host_fs TYPE MIB DIR: a small tmpfs or loop-mounted ext4 at DIR (unmounted on exit).
h_host_fs() {
    local type=$1 mib=$2 dir=$3
    mkdir -p "$dir"
    case $type in
        tmpfs) mount -t tmpfs -o "size=${mib}m" tmpfs "$dir" ;;
        ext4)
            truncate -s "${mib}M" "$WORK/$type.img"
            mkfs.ext4 -q -F "$WORK/$type.img"
            # -o loop: the loop device goes away with the unmount.
            mount -t ext4 -o loop "$WORK/$type.img" "$dir"
            ;;
        *) h_fail "unknown host filesystem type $type" ;;
    esac
    h_track "$dir"
}

# h_mkfs STORE
h_mkfs() { "$COWFS" mkfs "$1" >/dev/null || h_fail "mkfs $1"; }
