#!/usr/bin/env bash
# HTTPS throughput: the gateway against nginx on the same machine, same certificate,
# TLS 1.3 TLS_AES_256_GCM_SHA384, HTTP/1.1, one curl transfer at a time, run alternately.
# Also the gateway's peak RSS (VmHWM) for a SMALL vs a BIG upload and download, each
# measured in a fresh gateway process (VmHWM is a lifetime high-water mark).
#
# Usage (from anywhere):   bash benches/https.sh
# Environment:
#   BIG=1024        big file, MiB (throughput runs and the "big" RSS measurement)
#   SMALL=64        small file, MiB (the "small" RSS measurement)
#   RUNS=3          alternating rounds (gw PUT, nginx PUT, gw GET, nginx GET per round)
#   WARMUP=2        untimed rounds first (page cache and first-touch memory, see docs/benchmarks.md)
#   RSS_ONLY=1      only the peak-RSS measurements (fresh process per transfer), no throughput rounds
#   SKIP_BUILD=1    do not run `cargo build --release -p gateway` (use target/release/gateway as is)
#   GATEWAY_BIN=... benchmark this gateway binary instead (implies SKIP_BUILD=1)
#   BENCH_TMPDIR    where the temporary directory is made (default $TMPDIR or /tmp);
#                   it needs about 5 x BIG of free space
#   CURL_MAX_TIME=600   seconds any one curl transfer may take
#
# Only 127.0.0.1 is used; the gateway binds port 0, nginx a free ephemeral port chosen at
# run time. Everything started here is stopped, and the temporary directory removed, on exit.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # shared helpers (die, stop_pid, ...)

BIG=${BIG:-1024}
SMALL=${SMALL:-64}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-2}
CURL_MAX_TIME=${CURL_MAX_TIME:-600}
STARTUP_TIMEOUT=30   # seconds a server gets to come up
STOP_TIMEOUT=10      # seconds a server gets to stop before SIGKILL

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${GATEWAY_BIN:-$TARGET_DIR/release/gateway}
[[ -n ${GATEWAY_BIN:-} ]] && SKIP_BUILD=1

extra=""
[[ -n ${GATEWAY_BIN:-} ]] && extra+="GATEWAY_BIN=$GATEWAY_BIN "
[[ ${SKIP_BUILD:-0} == 1 && -z ${GATEWAY_BIN:-} ]] && extra+="SKIP_BUILD=1 "
[[ -n ${BENCH_TMPDIR:-} ]] && extra+="BENCH_TMPDIR=$BENCH_TMPDIR "
[[ ${RSS_ONLY:-0} == 1 ]] && extra+="RSS_ONLY=1 "
echo "command: ${extra}BIG=$BIG SMALL=$SMALL RUNS=$RUNS WARMUP=$WARMUP bash benches/https.sh${*:+ $*}   (cwd $ROOT)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"

for v in BIG SMALL RUNS CURL_MAX_TIME; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (got '$WARMUP')"

# ---------------------------------------------------------------------------- prerequisites
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

NGINX=${NGINX:-$(command -v nginx || true)}
if [[ -z $NGINX && -x /usr/sbin/nginx ]]; then NGINX=/usr/sbin/nginx; fi   # not on a user's PATH
if [[ -z $NGINX ]]; then
    echo "== installing nginx (Debian package nginx-light)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
[[ -x $NGINX ]] || die "nginx not found after installation"
"$NGINX" -V 2>&1 | grep -q -- '--with-http_dav_module' || die "$NGINX lacks the dav module (needed for PUT)"
command -v curl >/dev/null || die "curl is required"
if [[ ! -x /usr/bin/time ]]; then   # GNU time: the client's own CPU, taken out of the machine's
    echo "== installing time (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found after installation"
command -v sha256sum >/dev/null || die "sha256sum is required"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== cargo build --release -p gateway (no-op when up to date)"
    (cd "$ROOT" && cargo build --release -p gateway --quiet) ||
        die "cargo build failed; SKIP_BUILD=1 benchmarks the existing binary, GATEWAY_BIN=... another one"
fi
[[ -x $BIN ]] || die "$BIN missing (build failed or SKIP_BUILD=1 without a binary)"

# ---------------------------------------------------------------------------- temp dir, cleanup
T=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/gw-https-bench.XXXXXX")
GW_PID=""
NG_PID=""

cleanup() {
    set +e
    stop_pid "$GW_PID"; GW_PID=""
    stop_pid "$NG_PID"; NG_PID=""
    rm -rf "$T"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

need_kib=$(( (5 * BIG + 2 * SMALL + 64) * 1024 ))
avail_kib=$(df -Pk "$T" | awk 'NR == 2 { print $4 }')
(( avail_kib >= need_kib )) || die "$T has $((avail_kib / 1024)) MiB free, need about $((need_kib / 1024)) MiB"

# ---------------------------------------------------------------------------- machine, versions
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "nginx:   $("$NGINX" -v 2>&1)"
echo "curl:    $(curl --version | head -1)"
echo "gateway: $BIN ($(date -u -r "$BIN" '+built %Y-%m-%d %H:%M UTC'); working tree: git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(git -C "$ROOT" status --porcelain -- gateway certs config Cargo.toml Cargo.lock 2>/dev/null | wc -l) locally modified source files)"
echo "temp:    $T (filesystem $(df -P "$T" | awk 'NR == 2 { print $1 }'))"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-min load average at start; other work on the machine skews the figures)"
crypto_baseline
echo "crypto:  one SHA-256 pass ${SHA_S_GIB} s/GiB, one AES-256-GCM pass ${GCM_S_GIB} s/GiB (openssl speed -evp, 16 KiB blocks, one core)"

# ---------------------------------------------------------------------------- helpers
# CLK_TCK, stat_fields, cpu_ticks, vm_kib, mb, mib, free_port, median, vals, ratio: benches/lib.sh

# ---------------------------------------------------------------------------- gateway
GW_DATA=$T/gw-data
cat >"$T/gateway.toml" <<EOF
# Benchmark configuration (generated by benches/https.sh).
mode = "development"
data_dir = "$GW_DATA"
shutdown_grace = "1s"

[https]
listen = "127.0.0.1:0"
tls_profile = "aes256"

[storage]
backend = "local"

[[tenants]]
name = "bench"

[[users]]
name = "bench"
tenant = "bench"
home = "/"
permissions = ["all"]

[development]
demo_user = "bench"
EOF

GW_PORT=""
GW_TOKEN=""
GW_STARTS=0
start_gateway() {
    GW_STARTS=$((GW_STARTS + 1))
    local out=$T/gateway.$GW_STARTS.out err=$T/gateway.$GW_STARTS.err i
    : >"$out"   # exists before the poll below reads it
    "$BIN" serve --config "$T/gateway.toml" >"$out" 2>"$err" &
    GW_PID=$!
    for ((i = 0; i < STARTUP_TIMEOUT * 10; i++)); do
        GW_PORT=$(sed -n 's|^gateway listening on https://[^:]*:\([0-9]*\)/.*|\1|p' "$out")
        [[ -n $GW_PORT ]] && break
        kill -0 "$GW_PID" 2>/dev/null || { cat "$out" "$err" >&2; die "gateway exited during start-up"; }
        sleep 0.1
    done
    [[ -n $GW_PORT ]] || { cat "$out" "$err" >&2; die "gateway did not start within ${STARTUP_TIMEOUT}s"; }
    GW_TOKEN=$(<"$GW_DATA/dev/bench.token")
}
stop_gateway() { stop_pid "$GW_PID"; GW_PID=""; }

start_gateway
CA=$GW_DATA/dev/ca.pem
echo "== gateway pid $GW_PID on 127.0.0.1:$GW_PORT (dev CA $CA)"

# ---------------------------------------------------------------------------- nginx
NG=$T/nginx
mkdir -p "$NG/www/files" "$NG/body" "$NG/tmp"
cp "$GW_DATA/tls/server.pem" "$NG/server.pem"   # same chain (leaf, then dev CA) ...
cp "$GW_DATA/tls/server.key" "$NG/server.key"   # ... and the same ECDSA P-256 key
chmod 600 "$NG/server.key"
# Workers run as the invoking user (when root, `user` must name it explicitly), so every
# path they touch is in the temp dir and owned by that user.
NG_USER=""
[[ $EUID -eq 0 ]] && NG_USER="user $(id -un) $(id -gn);"

start_nginx() {
    local attempt i
    for attempt in 1 2 3 4 5; do
        NG_PORT=$(free_port)
        cat >"$NG/nginx.conf" <<EOF
# Benchmark configuration (generated by benches/https.sh).
$NG_USER
worker_processes 1;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 64; }
http {
    access_log $NG/access.log;
    client_body_temp_path $NG/body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    types { application/octet-stream bin; }
    default_type application/octet-stream;
    sendfile on;        # Debian default; not used under TLS without kTLS
    tcp_nopush on;
    server {
        listen 127.0.0.1:$NG_PORT ssl;
        server_name localhost;
        ssl_certificate $NG/server.pem;
        ssl_certificate_key $NG/server.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
        ssl_session_cache off;
        root $NG/www;
        location /files/ {
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }
    }
}
EOF
        "$NGINX" -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" &
        NG_PID=$!
        for ((i = 0; i < STARTUP_TIMEOUT * 10; i++)); do
            kill -0 "$NG_PID" 2>/dev/null || break
            if curl -s -o /dev/null --cacert "$CA" --resolve "localhost:$NG_PORT:127.0.0.1" "https://localhost:$NG_PORT/"; then
                return 0
            fi
            sleep 0.1
        done
        if kill -0 "$NG_PID" 2>/dev/null; then die "nginx did not answer within ${STARTUP_TIMEOUT}s"; fi
        wait "$NG_PID" 2>/dev/null || true
        NG_PID=""
        grep -q 'Address already in use' "$NG/error.log" 2>/dev/null || { cat "$NG/error.log" >&2; die "nginx failed to start"; }
        echo "   port $NG_PORT taken meanwhile; retrying" >&2
    done
    die "nginx: no free port after 5 attempts"
}
start_nginx
echo "== nginx pid $NG_PID on 127.0.0.1:$NG_PORT ($("$NGINX" -v 2>&1 | sed 's/.*: //'), worker_processes 1)"

ng_pids() { echo "$NG_PID" $(pgrep -P "$NG_PID" || true); }   # master and its workers

# What each side actually negotiates.
for side in gateway nginx; do
    port=$GW_PORT; [[ $side == nginx ]] && port=$NG_PORT
    neg=$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost -CAfile "$CA" -brief </dev/null 2>&1 |
        sed -n 's/^\(Protocol version\|Ciphersuite\|Verification\): *//p' | paste -sd' ' -) || true
    echo "   $side TLS: ${neg:-(openssl s_client unavailable)}"
done

# ---------------------------------------------------------------------------- files
SRC=$T/big.bin
SRC_SMALL=$T/small.bin
echo "== making ${BIG} MiB and ${SMALL} MiB random files"
head -c $((BIG * 1048576)) /dev/urandom >"$SRC"
head -c $((SMALL * 1048576)) /dev/urandom >"$SRC_SMALL"
SRC_SHA=$(sha256sum "$SRC" | cut -d' ' -f1)
SRC_SMALL_SHA=$(sha256sum "$SRC_SMALL" | cut -d' ' -f1)
BIG_BYTES=$((BIG * 1048576))

CURL=(curl -sS --fail --max-time "$CURL_MAX_TIME" --cacert "$CA" --tlsv1.3 --tls13-ciphers TLS_AES_256_GCM_SHA384 --http1.1)

url() { # url SIDE NAME
    if [[ $1 == gateway ]]; then echo "https://localhost:$GW_PORT/v1/files/$2"
    else echo "https://localhost:$NG_PORT/files/$2"; fi
}
resolve() { local p=$GW_PORT; [[ $1 == nginx ]] && p=$NG_PORT; echo "localhost:$p:127.0.0.1"; }
# nginx ignores the header; it is sent to both so the requests are the same size.
auth() { echo "Authorization: Bearer $GW_TOKEN"; }

# transfer SIDE OP FILE NAME -> sets SPEED (bytes/s), TOTAL (s), CPU (server CPU seconds),
# MCPU (machine CPU seconds minus curl's, up to the data being on disk) and, for PUT, SYNC_S
# (seconds a `sync` right after the reply took: data not yet on disk)
transfer() {
    local side=$1 op=$2 file=$3 name=$4 before after out pids mbefore mafter client
    if [[ $side == gateway ]]; then pids=$GW_PID; else pids=$(ng_pids); fi
    sync  # start every transfer with no dirty pages left over from the previous one
    mbefore=$(machine_ticks)
    before=$(cpu_ticks $pids)
    if [[ $op == PUT ]]; then
        # -H 'Expect:': no 100-continue round trip (curl would send one for a large body)
        out=$(/usr/bin/time -f '%U %S' -o "$T/curl.time" "${CURL[@]}" --resolve "$(resolve "$side")" -H "$(auth "$side")" -H 'Expect:' \
            -T "$file" -o "$T/put.resp" -w '%{http_code} %{speed_upload} %{size_upload} %{time_total}' "$(url "$side" "$name")")
    else
        out=$(/usr/bin/time -f '%U %S' -o "$T/curl.time" "${CURL[@]}" --resolve "$(resolve "$side")" -H "$(auth "$side")" \
            -o /dev/null -w '%{http_code} %{speed_download} %{size_download} %{time_total}' "$(url "$side" "$name")")
    fi
    after=$(cpu_ticks $pids)
    read -r code SPEED size TOTAL <<<"$out"
    SYNC_S=0
    if [[ $op == PUT ]]; then   # how long the data took to reach the disk after the reply
        local t0 t1
        t0=$(date +%s.%N); sync; t1=$(date +%s.%N)
        SYNC_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    fi
    mafter=$(machine_ticks)
    client=$(awk '{ printf "%.2f", $1 + $2 }' "$T/curl.time")
    MCPU=$(awk -v t=$((mafter - mbefore)) -v h="$CLK_TCK" -v c="$client" 'BEGIN { v = t / h - c; printf "%.2f", (v < 0 ? 0 : v) }')
    [[ $size == "$(stat -c %s "$file")" ]] || die "$side $op $name: $size bytes transferred, expected $(stat -c %s "$file")"
    if [[ $op == PUT && $side == gateway ]]; then
        local want=$SRC_SHA
        [[ $file == "$SRC_SMALL" ]] && want=$SRC_SMALL_SHA
        grep -q "\"sha256\":\"$want\"" "$T/put.resp" ||
            die "gateway PUT receipt does not carry the source SHA-256: $(cat "$T/put.resp")"
    fi
    CPU=$(awk -v t=$((after - before)) -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }')
}

# ---------------------------------------------------------------------------- throughput runs
if [[ ${RSS_ONLY:-0} != 1 ]]; then   # throughput and correctness (not indented)
# Reference: the disk itself (write BIG through the page cache, then sync), no TLS, no server.
sync
t0=$(date +%s.%N)
dd if="$SRC" of="$T/dd.bin" bs=1M status=none
t1=$(date +%s.%N)
sync
t2=$(date +%s.%N)
rm -f "$T/dd.bin"
echo "== disk reference: dd ${BIG} MiB -> $(awk -v a="$t0" -v b="$t1" -v n="$BIG_BYTES" 'BEGIN { printf "%.0f MB/s into the page cache", n / (b - a) / 1e6 }'), $(awk -v a="$t0" -v c="$t2" -v n="$BIG_BYTES" 'BEGIN { printf "%.0f MB/s including the final sync", n / (c - a) / 1e6 }')"

declare -A SPEEDS CPUS MCPUS SYNCS EFFS
echo
echo "== throughput: ${BIG} MiB, ${WARMUP} warm-up round(s) (w, not counted), then ${RUNS} rounds; MB/s = 10^6 bytes/s as curl reports it (whole request, incl. handshake and the server's reply)"
echo "   'sync s' = time a sync(1) right after a PUT's reply took (0 = the server had made the data durable already)"
echo "   'machine CPU s' = every CPU's busy time minus curl's, from the request until the data is on disk (a PUT's sync included): the server's work plus the kernel's writeback of its data"
printf '%-5s %-8s %-4s %10s %12s %13s %8s\n' round server op "MB/s" "server CPU s" "machine CPU s" "sync s"
for ((r = 1 - WARMUP; r <= RUNS; r++)); do
    for step in "gateway PUT" "nginx PUT" "gateway GET" "nginx GET"; do
        read -r side op <<<"$step"
        transfer "$side" "$op" "$SRC" big.bin
        if ((r < 1)); then   # warm-up: shown, not counted
            printf '%-5s %-8s %-4s %10s %12s %13s %8s\n' "w" "$side" "$op" "$(mb "$SPEED")" "$CPU" "$MCPU" "$([[ $op == PUT ]] && echo "$SYNC_S" || echo -)"
            continue
        fi
        SPEEDS[$side.$op]+="$SPEED "
        CPUS[$side.$op]+="$CPU "
        MCPUS[$side.$op]+="$MCPU "
        SYNCS[$side.$op]+="$SYNC_S "
        EFFS[$side.$op]+="$(awk -v n="$BIG_BYTES" -v t="$TOTAL" -v s="$SYNC_S" 'BEGIN { printf "%.0f", n / (t + s) }') "
        printf '%-5s %-8s %-4s %10s %12s %13s %8s\n' "$r" "$side" "$op" "$(mb "$SPEED")" "$CPU" "$MCPU" "$([[ $op == PUT ]] && echo "$SYNC_S" || echo -)"
    done
done

echo
echo "== correctness: SHA-256 of a full GET from each side against the source"
for side in gateway nginx; do
    got=$("${CURL[@]}" --resolve "$(resolve "$side")" -H "$(auth "$side")" "$(url "$side" big.bin)" | sha256sum | cut -d' ' -f1)
    [[ $got == "$SRC_SHA" ]] || die "$side GET returned SHA-256 $got, source is $SRC_SHA"
    echo "   $side: $got OK"
done

fi   # RSS_ONLY
# ---------------------------------------------------------------------------- peak RSS
# VmHWM is the process's lifetime peak, so every measurement gets a fresh gateway process
# (same data dir). Idle = VmHWM right after start-up; peak = VmHWM after one transfer.
echo
echo "== gateway peak RSS (VmHWM), fresh process per measurement"
declare -A IDLE PEAK
for m in "PUT small" "PUT big" "GET small" "GET big"; do
    read -r op which <<<"$m"
    file=$SRC; name=big.bin; mib_size=$BIG
    [[ $which == small ]] && { file=$SRC_SMALL; name=small.bin; mib_size=$SMALL; }
    stop_gateway
    start_gateway
    sleep 0.2
    IDLE[$op.$which]=$(vm_kib "$GW_PID" VmHWM)
    transfer gateway "$op" "$file" "$name"
    PEAK[$op.$which]=$(vm_kib "$GW_PID" VmHWM)
    printf '   %-3s %5s MiB: idle %6s MiB, peak %6s MiB (%s MB/s)\n' "$op" "$mib_size" \
        "$(mib "${IDLE[$op.$which]}")" "$(mib "${PEAK[$op.$which]}")" "$(mb "$SPEED")"
done

# ---------------------------------------------------------------------------- summary
if [[ ${RSS_ONLY:-0} != 1 ]]; then   # throughput summary (not indented)
echo
echo "== summary (${BIG} MiB, ${RUNS} rounds; curl over HTTP/1.1, TLS 1.3 TLS_AES_256_GCM_SHA384, 127.0.0.1)"
echo "   med = median, best = fastest round, CPU s = server CPU seconds for the whole transfer (lowest is the least disturbed)"
printf '| %-4s | %8s | %8s | %9s | %9s | %9s | %10s | %11s | %11s |\n' op "gw med" "ngx med" "gw/ngx" "gw best" "ngx best" "gw/ngx" "gw CPU s" "ngx CPU s"
printf '| %-4s | %8s | %8s | %9s | %9s | %9s | %10s | %11s | %11s |\n' "" "MB/s" "MB/s" "med" "MB/s" "MB/s" "best" "med (min)" "med (min)"
printf '|------|----------|----------|-----------|-----------|-----------|------------|-------------|-------------|\n'
for op in PUT GET; do
    g=$(vals "${SPEEDS[gateway.$op]}" | median);  n=$(vals "${SPEEDS[nginx.$op]}" | median)
    gb=$(vals "${SPEEDS[gateway.$op]}" | sort -g | tail -1); nb=$(vals "${SPEEDS[nginx.$op]}" | sort -g | tail -1)
    gc=$(vals "${CPUS[gateway.$op]}" | median);    nc=$(vals "${CPUS[nginx.$op]}" | median)
    gcm=$(vals "${CPUS[gateway.$op]}" | sort -g | head -1); ncm=$(vals "${CPUS[nginx.$op]}" | sort -g | head -1)
    printf '| %-4s | %8s | %8s | %9s | %9s | %9s | %10s | %11s | %11s |\n' "$op" "$(mb "$g")" "$(mb "$n")" "$(ratio "$g" "$n")" \
        "$(mb "$gb")" "$(mb "$nb")" "$(ratio "$gb" "$nb")" "$gc ($gcm)" "$nc ($ncm)"
done
echo
for op in PUT GET; do
    g=$(vals "${SPEEDS[gateway.$op]}" | median); n=$(vals "${SPEEDS[nginx.$op]}" | median)
    echo "goal gateway >= 1.0x nginx, $op (medians): $(awk -v g="$g" -v n="$n" 'BEGIN { print (g >= n ? "met" : "NOT met") }') ($(ratio "$g" "$n"))"
done
# Server CPU per GiB: the gateway may spend what nginx spends plus one SHA-256 pass and one
# AES-256-GCM pass (its hash of the content and its sealing or unsealing of the stored bytes).
# cpu_goal LABEL ARRAY: one goal line per op from the medians in the named array.
cpu_goal() {
    local label=$1 op gc nc gpg npg allow
    local -n figures=$2
    for op in PUT GET; do
        gc=$(vals "${figures[gateway.$op]}" | median); nc=$(vals "${figures[nginx.$op]}" | median)
        read -r gpg npg allow < <(awk -v g="$gc" -v n="$nc" -v mib="$BIG" -v sha="$SHA_S_GIB" -v gcm="$GCM_S_GIB" \
            'BEGIN { gib = mib / 1024; printf "%.2f %.2f %.2f\n", g / gib, n / gib, n / gib + sha + gcm }')
        echo "goal $label, $op: gateway $gpg s ≤ nginx $npg + SHA-256 $SHA_S_GIB + AES-GCM $GCM_S_GIB = $allow s: $(awk -v g="$gpg" -v a="$allow" 'BEGIN { print (g <= a ? "met" : "NOT met") }')"
    done
}
cpu_goal "server CPU per GiB" CPUS
# The same like for like: the gateway writes its data back to the disk itself (fdatasync as it
# goes and before the reply), nginx leaves it to the kernel's flusher threads, whose CPU the
# process figures above do not see. Machine CPU minus the client's counts both, each up to
# the data being on disk.
cpu_goal "machine CPU per GiB (like for like, writeback counted)" MCPUS
ge=$(vals "${EFFS[gateway.PUT]}" | median)
ne=$(vals "${EFFS[nginx.PUT]}" | median)
echo "PUT counting the time until the data is on disk (reply + a sync right after it; the gateway fsyncs before replying, nginx does not):"
echo "   gateway $(mb "$ge") MB/s, nginx $(mb "$ne") MB/s, ratio $(ratio "$ge" "$ne") (medians)"
fi   # RSS_ONLY
echo
printf '| %-26s | %12s | %12s | %12s |\n' "gateway peak RSS" "${SMALL} MiB" "${BIG} MiB" "big / small"
printf '|----------------------------|--------------|--------------|--------------|\n'
for op in PUT GET; do
    s=${PEAK[$op.small]}; b=${PEAK[$op.big]}
    printf '| %-26s | %8s MiB | %8s MiB | %11sx |\n' "$op (VmHWM, fresh process)" "$(mib "$s")" "$(mib "$b")" \
        "$(awk -v s="$s" -v b="$b" 'BEGIN { printf "%.2f", b / s }')"
done
printf '| %-26s | %8s MiB | %8s MiB | %12s |\n' "idle after start-up" "$(mib "${IDLE[PUT.small]}")" "$(mib "${IDLE[PUT.big]}")" "-"
for op in PUT GET; do
    echo "goal $op peak RSS for ${BIG} MiB within 5% of ${SMALL} MiB: $(awk -v s="${PEAK[$op.small]}" -v b="${PEAK[$op.big]}" 'BEGIN { printf "%s (%.3fx)", (b <= 1.05 * s ? "met" : "NOT met"), b / s }')"
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "done; stopping servers and removing $T"
