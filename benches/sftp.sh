#!/usr/bin/env bash
# SFTP: the gateway against OpenSSH (Debian `sshd` + `/usr/lib/openssh/sftp-server`) on the
# same machine, same OpenSSH `sftp` client, same cipher (aes256-gcm@openssh.com and
# chacha20-poly1305@openssh.com), same key exchange (curve25519-sha256) and Ed25519 keys.
# BIG MiB put and get, alternated (gw put, OpenSSH put, gw get, OpenSSH get per cipher and
# round): median throughput and ratio, server CPU seconds per GiB, server peak RSS; then the
# server memory per idle authenticated SFTP session with SESSIONS sessions open.
#
# Usage (from anywhere, as root: sshd needs it):   bash benches/sftp.sh
# Environment:
#   BIG=1024        file size, MiB
#   RUNS=3          counted rounds (per round and cipher: gw put, ossh put, gw get, ossh get)
#   WARMUP=1        untimed rounds first (page cache and first-touch memory, see docs/benchmarks.md)
#   CIPHERS="aes256-gcm@openssh.com chacha20-poly1305@openssh.com"
#   SESSIONS=500    idle authenticated sessions per server (0 skips the idle-session test)
#   SMALL=1000      many-small-files test: `put -r` / `get -r` of SMALL files of SMALL_KIB KiB
#                   (files/s, gateway vs OpenSSH; 0 skips it)
#   SMALL_KIB=16    size of each small file, KiB
#   SMALL_RUNS=3    counted rounds of the small-files test (after one warm-up round)
#   ONLY=smallfiles run only the small-files test (no big transfers, no idle sessions)
#   ONLY=idle       run only the idle-session test (no transfers)
#   ONLY=rss        only the fresh-process peak RSS of a RSS_SMALL MiB and a BIG MiB put and get
#   RSS_SMALL=256   the small size of ONLY=rss (MiB)
#   IDLE_SIDES="ossh gateway"   which servers the idle-session test measures
#   SESSION_BATCH=25   idle sessions started at a time (then waited for until authenticated)
#   SKIP_BUILD=1    do not run `cargo build --release -p gateway` (use target/release/gateway as is)
#   GATEWAY_BIN=... benchmark this gateway binary instead (implies SKIP_BUILD=1)
#   BENCH_TMPDIR    where the temporary directory is made (default $TMPDIR or /tmp);
#                   it needs about 4 x BIG of free space
#   XFER_MAX_TIME=600   seconds any one transfer may take
#   KEEP_TMP=1      keep the temporary directory (logs, configs) instead of removing it
#
# Only 127.0.0.1 is used; both servers listen on free ephemeral ports chosen at run time
# (retried if taken meanwhile). Everything started here (servers, sftp clients) is stopped,
# and the temporary directory removed, on exit.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # shared helpers (die, stop_pid, ...)

BIG=${BIG:-1024}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
CIPHERS=${CIPHERS:-aes256-gcm@openssh.com chacha20-poly1305@openssh.com}
SESSIONS=${SESSIONS:-500}
SESSION_BATCH=${SESSION_BATCH:-25}
IDLE_SIDES=${IDLE_SIDES:-ossh gateway}
SMALL=${SMALL:-1000}
SMALL_KIB=${SMALL_KIB:-16}
SMALL_RUNS=${SMALL_RUNS:-3}
ONLY=${ONLY:-}
[[ -z $ONLY || $ONLY == smallfiles || $ONLY == idle || $ONLY == rss ]] || { echo "error: ONLY must be empty, 'smallfiles', 'idle' or 'rss' (got '$ONLY')" >&2; exit 1; }
RSS_SMALL=${RSS_SMALL:-256}
[[ $ONLY == rss ]] && { SESSIONS=0; SMALL=0; }
[[ $ONLY == smallfiles ]] && SESSIONS=0
[[ $ONLY == idle ]] && SMALL=0
XFER_MAX_TIME=${XFER_MAX_TIME:-600}
KEX=curve25519-sha256  # both servers support it; OpenSSH 9.2's default (sntrup761x25519) the gateway lacks
STARTUP_TIMEOUT=60     # seconds a server gets to come up (the gateway makes an RSA-3072 host key)
STOP_TIMEOUT=10        # seconds a process gets to stop before SIGKILL
SESSION_TIMEOUT=120    # seconds one batch of idle sessions gets to authenticate
SSHD=${SSHD:-/usr/sbin/sshd}
SFTP_SERVER=${SFTP_SERVER:-/usr/lib/openssh/sftp-server}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${GATEWAY_BIN:-$TARGET_DIR/release/gateway}
[[ -n ${GATEWAY_BIN:-} ]] && SKIP_BUILD=1

extra=""
[[ -n ${GATEWAY_BIN:-} ]] && extra+="GATEWAY_BIN=$GATEWAY_BIN "
[[ ${SKIP_BUILD:-0} == 1 && -z ${GATEWAY_BIN:-} ]] && extra+="SKIP_BUILD=1 "
[[ -n ${BENCH_TMPDIR:-} ]] && extra+="BENCH_TMPDIR=$BENCH_TMPDIR "
[[ $CIPHERS != "aes256-gcm@openssh.com chacha20-poly1305@openssh.com" ]] && extra+="CIPHERS=\"$CIPHERS\" "
[[ -n $ONLY ]] && extra+="ONLY=$ONLY "
echo "command: ${extra}BIG=$BIG RUNS=$RUNS WARMUP=$WARMUP SESSIONS=$SESSIONS SMALL=$SMALL SMALL_KIB=$SMALL_KIB SMALL_RUNS=$SMALL_RUNS bash benches/sftp.sh${*:+ $*}   (cwd $ROOT)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"

for v in BIG RUNS SESSION_BATCH XFER_MAX_TIME; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in SMALL_KIB SMALL_RUNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in WARMUP SESSIONS SMALL; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
read -r -a CIPHER_LIST <<<"$CIPHERS"
((${#CIPHER_LIST[@]} > 0)) || die "CIPHERS is empty"

# ---------------------------------------------------------------------------- prerequisites
# sshd must start as root (privilege separation, logging in as root with the bench key).
[[ $EUID -eq 0 ]] || die "run as root: the OpenSSH side needs a root sshd"
if [[ ! -x $SSHD || ! -x $SFTP_SERVER ]]; then
    echo "== installing openssh-server (Debian package; the system service is not started by this script)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
fi
[[ -x $SSHD ]] || die "$SSHD not found after installation"
[[ -x $SFTP_SERVER ]] || die "$SFTP_SERVER not found after installation"
for c in sftp ssh-keygen sha256sum ss python3; do command -v $c >/dev/null || die "$c is required"; done

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== cargo build --release -p gateway (no-op when up to date)"
    (cd "$ROOT" && cargo build --release -p gateway --quiet) ||
        die "cargo build failed; SKIP_BUILD=1 benchmarks the existing binary, GATEWAY_BIN=... another one"
fi
[[ -x $BIN ]] || die "$BIN missing (build failed or SKIP_BUILD=1 without a binary)"

# Each idle session is one sftp + one ssh client process and one connection on each side.
need_fd=$((4 * SESSIONS + 1024))
if (($(ulimit -n) < need_fd)); then ulimit -n "$need_fd" 2>/dev/null || die "ulimit -n $need_fd failed (SESSIONS=$SESSIONS)"; fi

# ---------------------------------------------------------------------------- temp dir, cleanup
T=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/gw-sftp-bench.XXXXXX")
GW_PID=""
SD_PID=""
CLIENT_PIDS=()
IDLE_FD=""
MADE_RUN_SSHD=0

descendants() { # descendants PID: all processes below PID (not PID itself), from one ps snapshot
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END { n = split(kids[root], q, " "); for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], c, " "); for (j = 1; j <= m; j++) q[++n] = c[j] } }'
}
stop_clients() {
    local p i alive
    [[ -n $IDLE_FD ]] && { exec {IDLE_FD}>&-; IDLE_FD=""; }   # EOF: every idle sftp client exits
    ((${#CLIENT_PIDS[@]})) || return 0
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        alive=0
        for p in "${CLIENT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && { alive=1; break; }; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${CLIENT_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${CLIENT_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    CLIENT_PIDS=()
}
stop_sshd() {
    local kids
    [[ -n $SD_PID ]] || return 0
    kids=$(descendants "$SD_PID")
    stop_pid "$SD_PID"; SD_PID=""
    # Session processes outlive a killed listener; they are ours, so stop them by pid.
    [[ -n $kids ]] && kill -KILL $kids 2>/dev/null || true
}
cleanup() {
    local rc=$? f
    set +e
    if ((rc != 0)); then   # show the servers' own words before the temp dir goes
        for f in "$T"/gateway.*.err "$T/sshd/sshd.log"; do
            [[ -s $f ]] && { echo "--- last lines of $f" >&2; tail -n 30 "$f" >&2; }
        done
    fi
    stop_clients
    stop_pid "$GW_PID"; GW_PID=""
    stop_sshd
    ((MADE_RUN_SSHD)) && rmdir /run/sshd 2>/dev/null
    if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "KEEP_TMP=1: left $T in place" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

need_kib=$(((4 * BIG + 64) * 1024))
[[ $ONLY == smallfiles ]] && need_kib=$(((8 * SMALL * SMALL_KIB) + 65536))
[[ $ONLY == idle ]] && need_kib=65536
[[ $ONLY == rss ]] && need_kib=$(((3 * BIG + 2 * RSS_SMALL + 64) * 1024))
avail_kib=$(df -Pk "$T" | awk 'NR == 2 { print $4 }')
((avail_kib >= need_kib)) || die "$T has $((avail_kib / 1024)) MiB free, need about $((need_kib / 1024)) MiB"

# ---------------------------------------------------------------------------- machine, versions
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "sshd:    $("$SSHD" -V 2>&1 | head -1) (package $(dpkg-query -W -f '${Version}' openssh-server 2>/dev/null || echo '?')), subsystem $SFTP_SERVER"
echo "client:  $(ssh -V 2>&1) (sftp $(command -v sftp))"
echo "gateway: $BIN ($(date -u -r "$BIN" '+built %Y-%m-%d %H:%M UTC'); working tree: git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(git -C "$ROOT" status --porcelain -- gateway certs config Cargo.toml Cargo.lock 2>/dev/null | wc -l) locally modified source files)"
echo "temp:    $T (filesystem $(df -P "$T" | awk 'NR == 2 { print $1 }'))"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-min load average at start; other work on the machine skews the figures)"
crypto_baseline
echo "crypto:  one SHA-256 pass ${SHA_S_GIB} s/GiB, one AES-256-GCM pass ${GCM_S_GIB} s/GiB (openssl speed -evp, 16 KiB blocks, one core)"

# ---------------------------------------------------------------------------- helpers
# CLK_TCK, stat_fields, cpu_ticks, vm_kib, mb, mib, free_port, median, vals, ratio: benches/lib.sh
tree_ticks() { # tree_ticks PID: utime + stime of PID plus cutime + cstime (its reaped descendants)
    local f
    f=$(stat_fields "$1") || die "process $1 is gone"
    awk '{ print $12 + $13 + $14 + $15 }' <<<"$f"
}
pss_kib() { awk '$1 == "Pss:" { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || true; }
sum_kib() { # sum_kib FIELD PID...: sum of VmHWM/VmRSS (or Pss) over processes
    local field=$1 sum=0 p v
    shift
    for p in "$@"; do
        if [[ $field == Pss ]]; then v=$(pss_kib "$p"); else v=$(vm_kib "$p" "$field"); fi
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
now() { date +%s.%N; }

# ---------------------------------------------------------------------------- keys
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$T/client_key"
CLIENT_PUB=$(<"$T/client_key.pub")

# ---------------------------------------------------------------------------- gateway
GW_DATA=$T/gw-data
GW_PORT=""
GW_STARTS=0
write_gateway_config() {
    cat >"$T/gateway.toml" <<EOF
# Benchmark configuration (generated by benches/sftp.sh).
mode = "development"
data_dir = "$GW_DATA"
shutdown_grace = "1s"

[https]
listen = "127.0.0.1:0"

[sftp]
listen = "127.0.0.1:$1"
max_connections = $((SESSIONS + 1000))
connection_rate_per_source = 0
max_connections_per_source = 0

# Every client is 127.0.0.1: the per-source caps and the defender would measure themselves.
[defender]
enabled = false

[storage]
backend = "local"

[[tenants]]
name = "bench"

[[users]]
name = "bench"
tenant = "bench"
home = "/"
permissions = ["all"]
authorized_keys = ["$CLIENT_PUB"]

[development]
demo_user = "bench"
EOF
}
start_gateway() {
    local attempt out err i addr
    for attempt in 1 2 3 4 5; do
        GW_STARTS=$((GW_STARTS + 1))
        out=$T/gateway.$GW_STARTS.out err=$T/gateway.$GW_STARTS.err
        write_gateway_config "$(free_port)"
        : >"$out"
        "$BIN" serve --config "$T/gateway.toml" >"$out" 2>"$err" &
        GW_PID=$!
        addr=""
        for ((i = 0; i < STARTUP_TIMEOUT * 10; i++)); do
            addr=$(sed -n 's|^SFTP listening on \([0-9.]*:[0-9]*\).*|\1|p' "$out")
            [[ -n $addr ]] && break
            kill -0 "$GW_PID" 2>/dev/null || break
            sleep 0.1
        done
        if [[ -n $addr ]]; then GW_PORT=${addr##*:}; return 0; fi
        if kill -0 "$GW_PID" 2>/dev/null; then cat "$out" "$err" >&2; die "gateway did not start within ${STARTUP_TIMEOUT}s"; fi
        wait "$GW_PID" 2>/dev/null || true
        GW_PID=""
        grep -qi 'address already in use' "$out" "$err" || { cat "$out" "$err" >&2; die "gateway exited during start-up"; }
        echo "   port taken meanwhile; retrying" >&2
    done
    die "gateway: no free port after 5 attempts"
}
stop_gateway() { stop_pid "$GW_PID"; GW_PID=""; }

start_gateway
echo "== gateway pid $GW_PID, SFTP on 127.0.0.1:$GW_PORT (host keys generated under $GW_DATA/ssh)"

# ---------------------------------------------------------------------------- OpenSSH
SD=$T/sshd
mkdir -p "$SD" "$T/ossh"
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$SD/ssh_host_ed25519_key"
cp "$T/client_key.pub" "$SD/authorized_keys"
if [[ ! -d /run/sshd ]]; then   # privilege-separation directory, normally made by the service unit
    mkdir -m 0755 /run/sshd
    MADE_RUN_SSHD=1
fi
start_sshd() {
    local attempt i
    for attempt in 1 2 3 4 5; do
        SD_PORT=$(free_port)
        cat >"$SD/sshd_config" <<EOF
# Benchmark configuration (generated by benches/sftp.sh).
Port $SD_PORT
ListenAddress 127.0.0.1
HostKey $SD/ssh_host_ed25519_key
PidFile $SD/sshd.pid
AuthorizedKeysFile $SD/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp $SFTP_SERVER
Ciphers aes256-gcm@openssh.com,chacha20-poly1305@openssh.com
KexAlgorithms $KEX
MaxStartups 1000
LoginGraceTime 120
ClientAliveInterval 0
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY no
PrintMotd no
LogLevel ERROR
EOF
        "$SSHD" -t -f "$SD/sshd_config" || die "sshd rejects its configuration"
        "$SSHD" -D -e -f "$SD/sshd_config" 2>"$SD/sshd.log" &
        SD_PID=$!
        for ((i = 0; i < STARTUP_TIMEOUT * 10; i++)); do
            kill -0 "$SD_PID" 2>/dev/null || break
            [[ -n $(ss -Hltn "sport = :$SD_PORT" 2>/dev/null) ]] && return 0
            sleep 0.1
        done
        if kill -0 "$SD_PID" 2>/dev/null; then die "sshd did not listen within ${STARTUP_TIMEOUT}s"; fi
        wait "$SD_PID" 2>/dev/null || true
        SD_PID=""
        grep -qi 'address already in use' "$SD/sshd.log" || { cat "$SD/sshd.log" >&2; die "sshd failed to start"; }
        echo "   port $SD_PORT taken meanwhile; retrying" >&2
    done
    die "sshd: no free port after 5 attempts"
}
start_sshd
echo "== sshd pid $SD_PID on 127.0.0.1:$SD_PORT (sftp-server subsystem, privilege separation, logging in as root)"

# ---------------------------------------------------------------------------- client
# One command line for both servers; -F /dev/null ignores any user or system ssh_config.
sftp_args() { # sftp_args SIDE CIPHER: sets SFTP (array), the sftp command line without -b
    local port=$GW_PORT user=bench
    [[ $1 == ossh ]] && { port=$SD_PORT; user=root; }
    SFTP=(sftp -F /dev/null -P "$port" -i "$T/client_key" -c "$2"
        -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
        -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o KexAlgorithms=$KEX
        -o HostKeyAlgorithms=ssh-ed25519 -o Compression=no -o ControlMaster=no)
    SFTP_DEST=$user@127.0.0.1
}
remote() { if [[ $1 == gateway ]]; then echo "/$2"; else echo "$T/ossh/$2"; fi; }   # remote SIDE NAME
server_pids() { # the processes serving the sessions: the gateway, or every sshd descendant
    if [[ $1 == gateway ]]; then echo "$GW_PID"; else descendants "$SD_PID"; fi
}
server_ticks() { # CPU ticks so far; for sshd the listener's own + those of its reaped descendants
    if [[ $1 == gateway ]]; then cpu_ticks "$GW_PID"; else tree_ticks "$SD_PID"; fi
}
wait_no_sessions() { # wait until sshd has reaped every session process (cutime is complete then)
    local i
    [[ $1 == gateway ]] && { sleep 0.1; return 0; }
    for ((i = 0; i < STOP_TIMEOUT * 20; i++)); do
        [[ -z $(pgrep -P "$SD_PID" || true) ]] && return 0
        sleep 0.05
    done
    die "sshd session processes still running ${STOP_TIMEOUT}s after the client left"
}

SRC=$T/big.bin
BIG_BYTES=$((BIG * 1048576))
if [[ -z $ONLY || $ONLY == rss ]]; then
    echo "== making a ${BIG} MiB random file"
    head -c $((BIG * 1048576)) /dev/urandom >"$SRC"
    SRC_SHA=$(sha256sum "$SRC" | cut -d' ' -f1)
fi
SMALL_SRC=$T/small
SMALL_NAME=small   # remote directory of the current small-files round (set per round)

# transfer SIDE OP CIPHER [LOCAL] -> SPEED (bytes/s), SECS, CPU (server CPU s for the whole
# session incl. handshake), PEAK (server peak RSS during the session, KiB), SYNC_S.
# The batch brackets the put/get with local `!` commands: their timestamps time the transfer
# alone (not the SSH handshake), and the last one holds the session open until the server's
# peak RSS has been read (sshd's session processes exit with the session).
transfer() {
    local side=$1 op=$2 cipher=$3 local=${4:-/dev/null} pids before after pid rc i t0 t1
    rm -f "$T/t0" "$T/t1" "$T/go"
    {
        echo "!date +%s.%N >$T/t0"
        case $op in
            put) echo "put $SRC $(remote "$side" big.bin)" ;;
            get) echo "get $(remote "$side" big.bin) $local" ;;
            putr) echo "put -r $SMALL_SRC $(remote "$side" "$SMALL_NAME")" ;;
            getr) echo "get -r $(remote "$side" "$SMALL_NAME") $local" ;;
            none) ;;   # connect, authenticate, start SFTP, quit
        esac
        echo "!date +%s.%N >$T/t1.tmp; mv $T/t1.tmp $T/t1"
        echo "!timeout $STOP_TIMEOUT sh -c 'until [ -e $T/go ]; do sleep 0.02; done'; true"
    } >"$T/batch"
    sync   # start every transfer with no dirty pages left over from the previous one
    # Reset the gateway's VmHWM to its current RSS (Linux >= 4.0), so PEAK is this session's.
    [[ $side == gateway ]] && { echo 5 >"/proc/$GW_PID/clear_refs" || die "cannot reset VmHWM through /proc/$GW_PID/clear_refs"; }
    before=$(server_ticks "$side")
    sftp_args "$side" "$cipher"
    "${SFTP[@]}" -b "$T/batch" "$SFTP_DEST" >"$T/sftp.out" 2>"$T/sftp.err" &
    pid=$!
    for ((i = 0; i < XFER_MAX_TIME * 50; i++)); do
        [[ -e $T/t1 ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    if [[ ! -e $T/t1 ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        cat "$T/sftp.out" "$T/sftp.err" >&2
        die "$side $op ($cipher) failed or took more than ${XFER_MAX_TIME}s"
    fi
    # The session is still open here: peak RSS of everything serving it.
    PEAK=$(sum_kib VmHWM $(server_pids "$side"))
    touch "$T/go"
    rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || { cat "$T/sftp.out" "$T/sftp.err" >&2; die "$side $op ($cipher): sftp exited with $rc"; }
    wait_no_sessions "$side"
    if [[ $side == gateway ]] && ! kill -0 "$GW_PID" 2>/dev/null; then
        wait "$GW_PID" && rc=0 || rc=$?
        GW_PID=""
        die "the gateway exited (status $rc) during or right after $op ($cipher)"
    fi
    after=$(server_ticks "$side")
    t0=$(<"$T/t0"); t1=$(<"$T/t1")
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    SPEED=$(awk -v s="$SECS" -v n="$BIG_BYTES" 'BEGIN { printf "%.0f", n / s }')
    [[ $op == none ]] && SPEED=0
    CPU=$(awk -v t=$((after - before)) -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }')
    SYNC_S=0
    if [[ $op == put* ]]; then   # how long the data took to reach the disk after the put
        local s0 s1
        s0=$(now); sync; s1=$(now)
        SYNC_S=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }')
        if [[ $side == ossh && $op == put ]]; then
            [[ $(stat -c %s "$T/ossh/big.bin") == "$BIG_BYTES" ]] || die "ossh put: wrong size on disk"
        fi
    fi
}

per_gib() { awk -v c="$1" -v m="$BIG" 'BEGIN { printf "%.2f", c * 1024 / m }'; }   # CPU s per transfer -> per GiB
short() { sed 's/@openssh.com//; s/-poly1305//' <<<"$1"; }

# ---------------------------------------------------------------------------- throughput runs
if [[ -z $ONLY ]]; then   # big transfers (not indented: up to the end of the fresh-process section)
sync
t0=$(now)
dd if="$SRC" of="$T/dd.bin" bs=1M status=none
t1=$(now)
sync
t2=$(now)
rm -f "$T/dd.bin"
echo "== disk reference: dd ${BIG} MiB -> $(awk -v a="$t0" -v b="$t1" -v n="$BIG_BYTES" 'BEGIN { printf "%.0f MB/s into the page cache", n / (b - a) / 1e6 }'), $(awk -v a="$t0" -v c="$t2" -v n="$BIG_BYTES" 'BEGIN { printf "%.0f MB/s including the final sync", n / (c - a) / 1e6 }')"

# Fixed cost of one session (connect, key exchange, public-key login, SFTP init, quit), so the
# per-GiB CPU figures can be read net of it: sshd forks and re-executes itself per connection.
echo "== server CPU s of an empty session (no transfer), $(short "${CIPHER_LIST[0]}"), 5 each:"
declare -A EMPTY
for ((r = 1; r <= 5; r++)); do
    for side in gateway ossh; do
        transfer "$side" none "${CIPHER_LIST[0]}"
        EMPTY[$side]+="$CPU "
    done
done
for side in gateway ossh; do
    printf '   %-8s %s -> median %s s\n' "$side" "${EMPTY[$side]}" "$(vals "${EMPTY[$side]}" | median)"
done

declare -A SPEEDS CPUS PEAKS
echo
echo "== throughput: ${BIG} MiB, ${WARMUP} warm-up round(s) (w, not counted), then ${RUNS} rounds; MB/s = 10^6 bytes/s"
echo "   from the client's first to last byte of the put/get (SSH handshake excluded); 'server CPU s' covers the whole"
echo "   session (handshake included); 'peak RSS' = server VmHWM during the session (sshd: its session processes, summed)"
echo "   'sync s' = time a sync(1) right after a put took (0 = the server had made the data durable already)"
printf '%-5s %-8s %-8s %-4s %10s %12s %14s %8s\n' round server cipher op "MB/s" "server CPU s" "peak RSS MiB" "sync s"
for ((r = 1 - WARMUP; r <= RUNS; r++)); do
    for cipher in "${CIPHER_LIST[@]}"; do
        for step in "gateway put" "ossh put" "gateway get" "ossh get"; do
            read -r side op <<<"$step"
            transfer "$side" "$op" "$cipher"
            label=$r; ((r < 1)) && label=w
            printf '%-5s %-8s %-8s %-4s %10s %12s %14s %8s\n' "$label" "$side" "$(short "$cipher")" "$op" "$(mb "$SPEED")" \
                "$CPU" "$(mib "$PEAK")" "$([[ $op == put ]] && echo "$SYNC_S" || echo -)"
            ((r < 1)) && continue
            k=$side.$op.$cipher
            SPEEDS[$k]+="$SPEED "
            CPUS[$k]+="$CPU "
            PEAKS[$k]+="$PEAK "
        done
    done
done

echo
echo "== correctness: SHA-256 of a full get from each server against the source (${CIPHER_LIST[0]})"
for side in gateway ossh; do
    transfer "$side" get "${CIPHER_LIST[0]}" "$T/check.bin"
    got=$(sha256sum "$T/check.bin" | cut -d' ' -f1)
    rm -f "$T/check.bin"
    [[ $got == "$SRC_SHA" ]] || die "$side get returned SHA-256 $got, source is $SRC_SHA"
    echo "   $side: $got OK"
done

fi   # big transfers, up to here
if [[ -z $ONLY || $ONLY == rss ]]; then   # fresh-process RSS (not indented)
# ---------------------------------------------------------------------------- gateway peak RSS, fresh process
# The per-round "peak RSS" above is VmHWM reset (clear_refs) at session start, so for the
# long-lived gateway it also holds memory kept from earlier sessions (allocator caches).
# Here every measurement gets a fresh gateway process (same data dir), as in benches/https.sh.
echo
echo "== gateway peak RSS (VmHWM), fresh process per measurement, ${BIG} MiB, $(short "${CIPHER_LIST[0]}")"
declare -A FRESH
fresh_rss() { # fresh_rss OP KEY: one transfer of $SRC (put) or big.bin (get) in a fresh gateway
    stop_gateway
    start_gateway
    sleep 0.5
    FRESH[idle.$2]=$(vm_kib "$GW_PID" VmHWM)
    transfer gateway "$1" "${CIPHER_LIST[0]}"
    FRESH[$2]=$(vm_kib "$GW_PID" VmHWM)
    FRESH[after.$2]=$(vm_kib "$GW_PID" VmRSS)
    printf '   %-3s %5s MiB: idle %6s MiB, peak %6s MiB, RSS after the session %6s MiB (%s MB/s)\n' "$1" "$3" \
        "$(mib "${FRESH[idle.$2]}")" "$(mib "${FRESH[$2]}")" "$(mib "${FRESH[after.$2]}")" "$(mb "$SPEED")"
}
if [[ $ONLY == rss ]]; then   # the small size first, as big.bin, then the big one over it
    BIG_SRC=$SRC
    SRC=$T/rss-small.bin
    head -c $((RSS_SMALL * 1048576)) /dev/urandom >"$SRC"
    fresh_rss put small.put "$RSS_SMALL"
    fresh_rss get small.get "$RSS_SMALL"
    SRC=$BIG_SRC
fi
fresh_rss put put "$BIG"
fresh_rss get get "$BIG"
if [[ $ONLY == rss ]]; then
    for op in put get; do
        echo "goal gateway $op peak RSS for ${BIG} MiB within 5% of ${RSS_SMALL} MiB: $(awk -v s="${FRESH[small.$op]}" -v b="${FRESH[$op]}" 'BEGIN { printf "%s (%.1f vs %.1f MiB, %.3fx)", (b <= 1.05 * s ? "met" : "NOT met"), b / 1024, s / 1024, b / s }')"
    done
fi

fi   # fresh-process RSS

# ---------------------------------------------------------------------------- many small files
# SMALL files of SMALL_KIB KiB in one local directory, `put -r` into a new remote directory, then
# `get -r` of it, alternated gateway / OpenSSH, one warm-up round and SMALL_RUNS counted rounds.
# The gateway acknowledges each CLOSE only once the file's data, its directory entry and its
# `completed` audit record are on disk; sftp-server makes nothing durable, so the "sync s" column
# (a sync(1) right after the put) is what OpenSSH leaves to be written.
declare -A SMALL_RATE SMALL_CPU SMALL_SYNC
if ((SMALL > 0)); then
    echo
    echo "== many small files: put -r / get -r of $SMALL x $SMALL_KIB KiB ($(short "${CIPHER_LIST[0]}")), 1 warm-up round (w), $SMALL_RUNS counted"
    mkdir -p "$SMALL_SRC"
    for ((i = 0; i < SMALL; i++)); do head -c $((SMALL_KIB * 1024)) /dev/urandom >"$SMALL_SRC/f$(printf '%05d' "$i").bin"; done
    SMALL_SUM=$(cd "$SMALL_SRC" && sha256sum -- * | sha256sum | cut -d' ' -f1)
    printf '%-5s %-8s %-4s %9s %8s %12s %8s
' round server op "files/s" "secs" "server CPU s" "sync s"
    for ((r = 0; r <= SMALL_RUNS; r++)); do
        SMALL_NAME=small.$r
        for step in "gateway putr" "ossh putr" "gateway getr" "ossh getr"; do
            read -r side op <<<"$step"
            got_dir=$T/got.$r.$side
            transfer "$side" "$op" "${CIPHER_LIST[0]}" "$got_dir"
            rate=$(awk -v s="$SECS" -v n="$SMALL" 'BEGIN { printf "%.1f", n / s }')
            label=$r; ((r < 1)) && label=w
            printf '%-5s %-8s %-4s %9s %8s %12s %8s
' "$label" "$side" "${op%r} -r" "$rate" "$SECS" "$CPU" \
                "$([[ $op == putr ]] && echo "$SYNC_S" || echo -)"
            if [[ $op == getr ]]; then   # what came back is what went up
                got=$(cd "$got_dir" 2>/dev/null && sha256sum -- * | sha256sum | cut -d' ' -f1)
                [[ $got == "$SMALL_SUM" ]] || die "$side get -r of $SMALL_NAME: the files differ from the source"
            fi
            ((r < 1)) && continue
            SMALL_RATE[$side.$op]+="$rate "
            SMALL_CPU[$side.$op]+="$CPU "
            [[ $op == putr ]] && SMALL_SYNC[$side]+="$SYNC_S "
        done
    done
    # Nothing is deleted until every round is done: ext4 without a journal makes each new
    # inode skip the ones freed in the last 30 s, so deleting a round's files would slow the
    # next rounds' creates (the side that deleted most, most).
    # (KEEP_TMP=1 keeps them, so that back-to-back runs do not slow each other either.)
    [[ ${KEEP_TMP:-0} == 1 ]] || rm -rf "$T"/got.* "$T/ossh"/small.*
    # Reference: what the gateway's durability promise alone costs per file on this disk, with
    # no SSH, no SFTP and no crypto: create a staging file, write it, fdatasync; rename it into
    # a directory; then fsync that directory while a trail-sized record is appended and
    # fdatasynced on a second thread (the overlap the gateway's close uses). OpenSSH does none.
    mkdir -p "$T/floor/staging" "$T/floor/objects"
    FLOOR_MS=$(python3 - "$T/floor" "$SMALL" "$((SMALL_KIB * 1024))" <<'PY'
import os, sys, time
from concurrent.futures import ThreadPoolExecutor
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data, record = os.urandom(size), b"x" * 600 + b"\n"
trail = os.open(f"{root}/trail.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
objects = f"{root}/objects"
def append():
    os.write(trail, record)
    os.fdatasync(trail)
with ThreadPoolExecutor(1) as recorder:
    start = time.monotonic()
    for i in range(n):
        staging = f"{root}/staging/{i}.part"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fdatasync(fd)
        os.close(fd)
        os.rename(staging, f"{objects}/f{i}")
        recorded = recorder.submit(append)
        dfd = os.open(objects, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        recorded.result()
    print(f"{(time.monotonic() - start) * 1000 / n:.3f}")
PY
)
    echo "   durability floor: $FLOOR_MS ms a file (create + write $SMALL_KIB KiB + fdatasync, rename, then directory fsync || 600 B record + fdatasync; $SMALL files, no network)"
    # Every acknowledged file has its `completed` record in the gateway's trail.
    trail=$GW_DATA/audit/audit.jsonl
    done_n=$(grep -c '"event":"completed".*"operation":"upload","path":"small\.[0-9]*/f[0-9]*\.bin"' "$trail" || true)
    want=$((SMALL * (SMALL_RUNS + 1)))
    ((done_n >= want)) || die "the gateway's trail has $done_n completed uploads under /small.N, expected $want"
    echo "   gateway trail: $done_n completed records for the $want uploaded small files"
fi

# ---------------------------------------------------------------------------- idle sessions
# SESSIONS sftp clients (`-b -` reading a FIFO nobody writes to) stay connected, authenticated
# and idle; closing the FIFO's only writer makes them all quit. A client counts as up once
# ssh logged "Authenticated to" and the server holds a connection for it.
declare -A IDLE_RES
idle_sessions() { # idle_sessions SIDE
    local side=$1 cipher=${CIPHER_LIST[0]} i j up base_rss base_pss rss pss n t_start t_up conns pids
    local d=$T/idle.$side
    mkdir -p "$d"
    if [[ $side == gateway ]]; then
        # A fresh process, so the baseline holds nothing left from the transfers.
        stop_gateway
        start_gateway
        sleep 1
        base_rss=$(vm_kib "$GW_PID" VmRSS); base_pss=$(pss_kib "$GW_PID")
    else
        base_rss=$(vm_kib "$SD_PID" VmRSS); base_pss=$(pss_kib "$SD_PID")
    fi
    # Opened after any server start, so no server inherits the write end.
    rm -f "$T/idle.fifo"
    mkfifo "$T/idle.fifo"
    exec {IDLE_FD}<>"$T/idle.fifo"
    sftp_args "$side" "$cipher"
    t_start=$(now)
    for ((i = 0; i < SESSIONS; i += SESSION_BATCH)); do
        for ((j = i; j < i + SESSION_BATCH && j < SESSIONS; j++)); do
            # {IDLE_FD}>&-: the clients must not hold the FIFO's write end themselves
            "${SFTP[@]}" -o LogLevel=VERBOSE -b - "$SFTP_DEST" <"$T/idle.fifo" >/dev/null 2>"$d/$j.err" {IDLE_FD}>&- &
            CLIENT_PIDS+=($!)
        done
        for ((k = 0; k < SESSION_TIMEOUT * 10; k++)); do
            up=$( (grep -l '^Authenticated to' "$d"/*.err 2>/dev/null || true) | wc -l)
            ((up >= j)) && break
            sleep 0.1
        done
        ((up >= j)) || { tail -n 3 "$d"/*.err | tail -n 20 >&2; die "$side: only $up of $j idle sessions authenticated within ${SESSION_TIMEOUT}s"; }
    done
    t_up=$(now)
    # Server side complete: the gateway holds SESSIONS connections, sshd one sftp-server each.
    for ((k = 0; k < SESSION_TIMEOUT * 10; k++)); do
        if [[ $side == gateway ]]; then
            conns=$(ss -Htn state established "sport = :$GW_PORT" | wc -l)
        else
            conns=$(descendants "$SD_PID" | while read -r p; do cat "/proc/$p/comm" 2>/dev/null; done | grep -cx 'sftp-server' || true)
        fi
        ((conns >= SESSIONS)) && break
        sleep 0.1
    done
    ((conns >= SESSIONS)) || die "$side: server side shows $conns of $SESSIONS sessions"
    sleep 2   # let the last sessions finish their SFTP init
    alive=0
    for p in "${CLIENT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    ((alive == SESSIONS)) || die "$side: $((SESSIONS - alive)) idle clients exited early"
    if [[ $side == gateway ]]; then
        pids=$GW_PID
        n=1
    else
        pids="$SD_PID $(descendants "$SD_PID")"
        n=$(wc -w <<<"$pids")
    fi
    rss=$(sum_kib VmRSS $pids); pss=$(sum_kib Pss $pids)
    IDLE_RES[$side]="$base_rss $base_pss $rss $pss $n $(awk -v a="$t_start" -v b="$t_up" 'BEGIN { printf "%.1f", b - a }')"
    printf '   %-8s %4d sessions up in %5.1f s; server %4d process(es): RSS %8s MiB (idle baseline %6s), PSS %8s MiB (baseline %6s) -> per session RSS %6s KiB, PSS %6s KiB\n' \
        "$side" "$SESSIONS" "$(awk -v a="$t_start" -v b="$t_up" 'BEGIN { print b - a }')" "$n" "$(mib "$rss")" "$(mib "$base_rss")" \
        "$(mib "$pss")" "$(mib "$base_pss")" "$(((rss - base_rss) / SESSIONS))" "$(((pss - base_pss) / SESSIONS))"
    if [[ $side == ossh ]]; then   # where sshd's memory is, by process kind
        for p in $(descendants "$SD_PID"); do
            printf '%s %s %s\n' "$(tr -d '\0' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-40 | sed 's/^$/?/')" \
                "$(vm_kib "$p" VmRSS)" "$(pss_kib "$p")"
        done | awk '{ k = $1; for (i = 2; i < NF - 1; i++) k = k " " $i; c[k]++; r[k] += $(NF - 1); s[k] += $NF }
                    END { for (k in c) printf "      %-40s x%4d  RSS %6.0f KiB  PSS %6.0f KiB each (mean)\n", k, c[k], r[k] / c[k], s[k] / c[k] }'
    fi
    stop_clients
    wait_no_sessions "$side"
}
if ((SESSIONS > 0)); then
    echo
    echo "== idle sessions: ${SESSIONS} authenticated idle SFTP sessions per server ($(short "${CIPHER_LIST[0]}"), batches of $SESSION_BATCH)"
    for side in $IDLE_SIDES; do idle_sessions "$side"; done
fi

# ---------------------------------------------------------------------------- summary
if [[ -z $ONLY ]]; then   # big transfers (not indented)
echo
echo "== summary (${BIG} MiB, ${RUNS} rounds; OpenSSH sftp client, $KEX, 127.0.0.1)"
echo "   med = median; CPU s/GiB = server CPU seconds per GiB, whole session, median (min); peak RSS = median of the rounds
   (1) gateway: VmHWM reset at each session start in the long-lived process, so it includes memory kept from earlier
       sessions; see the fresh-process line below"
printf '| %-10s | %-3s | %8s | %8s | %7s | %8s | %8s | %7s | %14s | %14s | %8s | %8s |\n' cipher op "gw med" "ossh med" "gw/ossh" "gw best" "ossh bst" "gw/ossh" "gw CPU s/GiB" "ossh CPU s/GiB" "gw RSS" "ossh RSS"
printf '| %-10s | %-3s | %8s | %8s | %7s | %8s | %8s | %7s | %14s | %14s | %8s | %8s |\n' "" "" "MB/s" "MB/s" "med" "MB/s" "MB/s" "best" "med (min)" "med (min)" "MiB (1)" "MiB"
printf '|------------|-----|----------|----------|---------|----------|----------|---------|----------------|----------------|----------|----------|\n'
for cipher in "${CIPHER_LIST[@]}"; do
    for op in put get; do
        g=$(vals "${SPEEDS[gateway.$op.$cipher]}" | median); o=$(vals "${SPEEDS[ossh.$op.$cipher]}" | median)
        gb=$(vals "${SPEEDS[gateway.$op.$cipher]}" | sort -g | tail -1); ob=$(vals "${SPEEDS[ossh.$op.$cipher]}" | sort -g | tail -1)
        gc=$(vals "${CPUS[gateway.$op.$cipher]}" | median); oc=$(vals "${CPUS[ossh.$op.$cipher]}" | median)
        gcm=$(vals "${CPUS[gateway.$op.$cipher]}" | sort -g | head -1); ocm=$(vals "${CPUS[ossh.$op.$cipher]}" | sort -g | head -1)
        gr=$(vals "${PEAKS[gateway.$op.$cipher]}" | median); orss=$(vals "${PEAKS[ossh.$op.$cipher]}" | median)
        printf '| %-10s | %-3s | %8s | %8s | %7s | %8s | %8s | %7s | %14s | %14s | %8s | %8s |\n' "$(short "$cipher")" "$op" \
            "$(mb "$g")" "$(mb "$o")" "$(ratio "$g" "$o")" "$(mb "$gb")" "$(mb "$ob")" "$(ratio "$gb" "$ob")" \
            "$(per_gib "$gc") ($(per_gib "$gcm"))" "$(per_gib "$oc") ($(per_gib "$ocm"))" "$(mib "$gr")" "$(mib "$orss")"
    done
done
echo
for cipher in "${CIPHER_LIST[@]}"; do
    for op in put get; do
        g=$(vals "${SPEEDS[gateway.$op.$cipher]}" | median); o=$(vals "${SPEEDS[ossh.$op.$cipher]}" | median)
        echo "goal gateway >= 1.0x OpenSSH, $(short "$cipher") $op (medians): $(awk -v g="$g" -v n="$o" 'BEGIN { print (g >= n ? "met" : "NOT met") }') ($(ratio "$g" "$o"))"
    done
done
# Server CPU per GiB: the gateway may spend what OpenSSH spends plus one SHA-256 pass and one
# AES-256-GCM pass (its hash of the content and its sealing or unsealing of the stored bytes).
for cipher in "${CIPHER_LIST[@]}"; do
    for op in put get; do
        gpg=$(per_gib "$(vals "${CPUS[gateway.$op.$cipher]}" | median)"); opg=$(per_gib "$(vals "${CPUS[ossh.$op.$cipher]}" | median)")
        allow=$(awk -v o="$opg" -v sha="$SHA_S_GIB" -v gcm="$GCM_S_GIB" 'BEGIN { printf "%.2f", o + sha + gcm }')
        echo "goal server CPU per GiB, $(short "$cipher") $op: gateway $gpg s ≤ OpenSSH $opg + SHA-256 $SHA_S_GIB + AES-GCM $GCM_S_GIB = $allow s: $(awk -v g="$gpg" -v a="$allow" 'BEGIN { print (g <= a ? "met" : "NOT met") }')"
    done
done
echo "server CPU s of an empty session (included once in every CPU s/GiB above): gateway $(vals "${EMPTY[gateway]}" | median), ossh $(vals "${EMPTY[ossh]}" | median) (medians of 5)"
echo "gateway peak RSS, fresh process, $(short "${CIPHER_LIST[0]}"): put $(mib "${FRESH[put]}") MiB, get $(mib "${FRESH[get]}") MiB (idle after start-up $(mib "${FRESH[idle.put]}") MiB)"
fi   # big transfers
if ((SMALL > 0)); then
    echo
    echo "== summary, many small files ($SMALL x $SMALL_KIB KiB, $SMALL_RUNS rounds, $(short "${CIPHER_LIST[0]}")): medians"
    printf '| %-6s | %10s | %10s | %7s | %12s | %12s |\n' op "gw files/s" "ossh files/s" "gw/ossh" "gw CPU s" "ossh CPU s"
    printf '|--------|------------|------------|---------|--------------|--------------|\n'
    for op in putr getr; do
        g=$(vals "${SMALL_RATE[gateway.$op]}" | median); o=$(vals "${SMALL_RATE[ossh.$op]}" | median)
        printf '| %-6s | %10s | %10s | %7s | %12s | %12s |\n' "${op%r} -r" "$g" "$o" "$(ratio "$g" "$o")" \
            "$(vals "${SMALL_CPU[gateway.$op]}" | median)" "$(vals "${SMALL_CPU[ossh.$op]}" | median)"
    done
    echo "   sync s after the put (median): gateway $(vals "${SMALL_SYNC[gateway]}" | median), ossh $(vals "${SMALL_SYNC[ossh]}" | median)"
    g=$(vals "${SMALL_RATE[gateway.putr]}" | median); o=$(vals "${SMALL_RATE[ossh.putr]}" | median)
    echo "goal gateway >= 0.8x OpenSSH files/s, put -r of $SMALL x $SMALL_KIB KiB (medians): $(awk -v g="$g" -v n="$o" 'BEGIN { print (g >= 0.8 * n ? "met" : "NOT met") }') ($(ratio "$g" "$o"))"
    # A server as fast as OpenSSH at everything else that also keeps the promise pays OpenSSH's
    # time per file plus the floor: the best ratio durability allows on this disk.
    echo "   ceiling with durability: OpenSSH $(awk -v o="$o" 'BEGIN { printf "%.3f", 1000 / o }') ms a file + floor $FLOOR_MS ms -> at most $(awk -v o="$o" -v f="$FLOOR_MS" 'BEGIN { printf "%.2fx", (1000 / o) / (1000 / o + f) }') OpenSSH's files/s"
fi
if ((SESSIONS > 0)); then
    echo
    printf '| %-8s | %8s | %10s | %10s | %12s | %12s | %9s | %9s |\n' server sessions "RSS MiB" "PSS MiB" "RSS/session" "PSS/session" "up in" processes
    printf '|----------|----------|------------|------------|--------------|--------------|-----------|-----------|\n'
    for side in $IDLE_SIDES; do
        read -r brss bpss rss pss n secs <<<"${IDLE_RES[$side]}"
        printf '| %-8s | %8s | %10s | %10s | %8s KiB | %8s KiB | %7s s | %9s |\n' "$side" "$SESSIONS" "$(mib "$rss")" "$(mib "$pss")" \
            "$(((rss - brss) / SESSIONS))" "$(((pss - bpss) / SESSIONS))" "$secs" "$n"
    done
    echo "   (RSS/PSS of all server processes with the sessions open, minus the idle server before them, / sessions)"
    [[ -n ${IDLE_RES[gateway]:-} ]] && read -r brss _ rss _ _ _ <<<"${IDLE_RES[gateway]}" &&
    echo "goal gateway memory per idle authenticated session ≤ 100 KiB at $SESSIONS sessions: $(((rss - brss) / SESSIONS)) KiB: $( (( (rss - brss) / SESSIONS <= 100 )) && echo met || echo "NOT met")"
fi
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "done; stopping servers and removing $T"
