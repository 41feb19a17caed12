# shellcheck shell=bash
# Helpers shared by benches/https.sh and benches/sftp.sh; sourced, not run.
# They rely on the caller's `set -euo pipefail`; stop_pid reads STOP_TIMEOUT (seconds), which
# the caller sets before it stops anything.

die() { echo "error: $*" >&2; exit 1; }

stop_pid() { # stop_pid PID: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------- /proc readings
# shellcheck disable=SC2034  # used by the sourcing scripts
CLK_TCK=$(getconf CLK_TCK)   # clock ticks per second, for cpu_ticks differences
stat_fields() { cut -d')' -f2- "/proc/$1/stat" 2>/dev/null; }   # fields after "(comm)": state=1 ... utime=12 stime=13 cutime=14 cstime=15
cpu_ticks() { # cpu_ticks PID...: utime + stime (all threads) of the given live processes (gone ones count 0)
    local sum=0 p f
    for p in "$@"; do
        f=$(stat_fields "$p") || continue
        sum=$((sum + $(awk '{ print $12 + $13 }' <<<"$f")))
    done
    echo "$sum"
}
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }   # busy ticks of all CPUs (user nice system irq softirq steal)
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }   # vm_kib PID VmHWM (empty if PID is gone)

# ---------------------------------------------------------------------------- units, ports, statistics
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }     # bytes/s -> MB/s
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }   # KiB -> MiB

free_port() { # a free TCP port in the kernel's ephemeral range
    local lo hi p i
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    for ((i = 0; i < 100; i++)); do
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        if [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]]; then echo "$p"; return 0; fi
    done
    die "no free port found"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }   # of numbers on stdin
vals() { tr ' ' '\n' <<<"$1" | grep .; }   # vals "A B C": one value a line
ratio() { awk -v g="$1" -v n="$2" 'BEGIN { printf "%.2fx", g / n }'; }

# ---------------------------------------------------------------------------- crypto baseline
# crypto_baseline: sets SHA_S_GIB and GCM_S_GIB, the CPU seconds one pass of SHA-256 and of
# AES-256-GCM over 1 GiB costs on this machine (`openssl speed -evp`, 16 KiB blocks, one
# core), the allowance the CPU-per-GiB goals give the gateway over the reference server.
speed_bps() { openssl speed -mr -evp "$1" -bytes 16384 -seconds 2 2>/dev/null | awk -F: '/^\+F:/ { r = $4 } END { print r + 0 }'; }   # speed_bps ALG: bytes/s
crypto_baseline() {
    SHA_S_GIB=$(awk -v r="$(speed_bps sha256)" 'BEGIN { if (r > 0) printf "%.3f", 1073741824 / r; else print "nan" }')
    GCM_S_GIB=$(awk -v r="$(speed_bps aes-256-gcm)" 'BEGIN { if (r > 0) printf "%.3f", 1073741824 / r; else print "nan" }')
    [[ $SHA_S_GIB != nan && $GCM_S_GIB != nan ]] || die "openssl speed gave no figure"
}
