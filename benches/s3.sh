#!/usr/bin/env bash
# S3 backend: the gateway (HTTPS + SFTP front ends, tenant on a `[[storages]]` S3 bucket with
# SSE-C) against a direct S3 client (boto3) talking to the same single-node Garage on the
# same machine, with the same SSE-C key. All on 127.0.0.1, one transfer at a time, alternated:
#   (1) SFTP put through the gateway (OpenSSH `sftp -b`, default cipher)  vs  boto3 upload_file
#   (2) HTTPS PUT through the gateway (curl)                                vs  boto3 upload_file
#   (3) HTTPS GET through the gateway (curl, of the object it stored)       vs  boto3 get_object
#       of that same object, streamed to /dev/null
# Median MB/s of BENCH_RUNS rounds, ratio gateway / direct against the goal (>= 0.8x). Then the
# gateway's peak RSS (VmHWM, fresh process per measurement) uploading BENCH_BIG_MIB vs
# BENCH_SMALL_MIB, over HTTPS and SFTP: goal, the big upload's peak within 5% of the small one's.
#
# The gateway runs in production mode from material made here: an ECDSA P-256 CA and server
# certificate (openssl), an Ed25519 SSH host key and client key (ssh-keygen), the tenant key and
# the audit checkpoint key (`gateway keys tenant` / `gateway keys audit`), the user's bearer
# token (`gateway users new`), a 32-byte SSE-C key file (0600) and Garage credential files (0600).
# Garage is set up as tests/src/s3.rs does (sqlite metadata, no compression, one node, layout
# assign/apply, `json-api CreateKey`, bucket create/allow). The gateway keeps its S3 defaults
# (part_size 16MiB, parts_in_flight 4); boto3 is given the same part size and concurrency.
# (rclone, like the Go SDKs, refuses SSE-C keys over plain HTTP, which Garage serves here.)
#
# Usage (from anywhere; the working tree's release binary is built first):   bash benches/s3.sh
# Environment:
#   BENCH_SIZE_MIB=1024   file size of the throughput runs, MiB
#   BENCH_BIG_MIB=4096    big upload of the RSS comparison, MiB
#   BENCH_SMALL_MIB=256   small upload of the RSS comparison, MiB
#   BENCH_RUNS=3          counted rounds (each: gw SFTP put, direct put, gw HTTPS PUT, direct put,
#                         gw HTTPS GET, direct GET)
#   BENCH_WARMUP=1        untimed rounds first (page cache, Garage's first writes)
#   BENCH_RSS_SFTP=1      also measure the SFTP put's peak RSS (0 = HTTPS PUT only)
#   SKIP_BUILD=1          do not run `cargo build --release -p gateway`
#   GATEWAY_BIN=...       benchmark this gateway binary instead (implies SKIP_BUILD=1)
#   GARAGE_BIN=...        Garage binary (default: `garage` on PATH, else ~/.cargo/bin/garage)
#   BENCH_TMPDIR          where the temporary directory is made (default $TMPDIR or /tmp); it
#                         needs room for the source files and every object Garage stores (old
#                         versions' blocks are only collected after Garage's GC delay)
#   BENCH_GATEWAY_ENV=""  VAR=VALUE words added to the gateway's environment only (diagnostics, e.g.
#                         GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576); shown in the command line
#   XFER_MAX_TIME=900     seconds any one transfer may take
#   KEEP_TMP=1            keep the temporary directory (configs, logs) instead of removing it
#
# Only 127.0.0.1 is used: Garage's three ports are free ports found by binding port 0 (python3),
# the gateway binds port 0 itself and prints its addresses. Everything started here is stopped,
# and the temporary directory removed, on exit.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # shared helpers (die, stop_pid, median, ...)

SIZE=${BENCH_SIZE_MIB:-1024}
BIG=${BENCH_BIG_MIB:-4096}
SMALL=${BENCH_SMALL_MIB:-256}
RUNS=${BENCH_RUNS:-3}
WARMUP=${BENCH_WARMUP:-1}
RSS_SFTP=${BENCH_RSS_SFTP:-1}
XFER_MAX_TIME=${XFER_MAX_TIME:-900}
GOAL=0.8             # throughput goal: gateway >= GOAL x direct
RSS_TOLERANCE=1.05   # RSS goal: big peak <= RSS_TOLERANCE x small peak
STARTUP_TIMEOUT=60   # seconds a server gets to come up
STOP_TIMEOUT=10      # seconds a server gets to stop before SIGKILL
BUCKET=bench
TENANT=bench
PREFIX=bench/        # the tenant's key prefix in the bucket
PART_MIB=16          # direct client's part size: the gateway's default part_size
CONCURRENCY=4        # direct client's parts at once: the gateway's default parts_in_flight

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${GATEWAY_BIN:-$TARGET_DIR/release/gateway}
[[ -n ${GATEWAY_BIN:-} ]] && SKIP_BUILD=1
GARAGE=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}

extra=""
[[ -n ${GATEWAY_BIN:-} ]] && extra+="GATEWAY_BIN=$GATEWAY_BIN "
[[ ${SKIP_BUILD:-0} == 1 && -z ${GATEWAY_BIN:-} ]] && extra+="SKIP_BUILD=1 "
[[ -n ${GARAGE_BIN:-} ]] && extra+="GARAGE_BIN=$GARAGE_BIN "
[[ -n ${BENCH_TMPDIR:-} ]] && extra+="BENCH_TMPDIR=$BENCH_TMPDIR "
[[ -n ${BENCH_GATEWAY_ENV:-} ]] && extra+="BENCH_GATEWAY_ENV=\"$BENCH_GATEWAY_ENV\" "
[[ $XFER_MAX_TIME != 900 ]] && extra+="XFER_MAX_TIME=$XFER_MAX_TIME "
echo "command: ${extra}BENCH_SIZE_MIB=$SIZE BENCH_BIG_MIB=$BIG BENCH_SMALL_MIB=$SMALL BENCH_RUNS=$RUNS BENCH_WARMUP=$WARMUP BENCH_RSS_SFTP=$RSS_SFTP bash benches/s3.sh${*:+ $*}   (cwd $ROOT)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"

for v in SIZE BIG SMALL RUNS XFER_MAX_TIME; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a non-negative integer (got '$WARMUP')"
[[ $RSS_SFTP == 0 || $RSS_SFTP == 1 ]] || die "BENCH_RSS_SFTP must be 0 or 1 (got '$RSS_SFTP')"

# ---------------------------------------------------------------------------- prerequisites
[[ -x $GARAGE ]] || die "Garage not found ($GARAGE); install: cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite,lmdb"
for c in curl sftp ssh-keygen openssl python3 sha256sum base64; do
    command -v $c >/dev/null || die "$c is required"
done
python3 -c 'import boto3' 2>/dev/null || die "the python3 module boto3 is required (pip install boto3)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is required (client CPU seconds; Debian package 'time')"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== cargo build --release -p gateway (no-op when up to date)"
    (cd "$ROOT" && cargo build --release -p gateway --quiet) ||
        die "cargo build failed; SKIP_BUILD=1 benchmarks the existing binary, GATEWAY_BIN=... another one"
fi
[[ -x $BIN ]] || die "$BIN missing (build failed or SKIP_BUILD=1 without a binary)"

# ---------------------------------------------------------------------------- temp dir, cleanup
T=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/gw-s3-bench.XXXXXX")
GW_PID=""
GA_PID=""

cleanup() {
    local rc=$? f
    set +e
    if ((rc != 0)); then   # the servers' own words, before the temp dir goes
        for f in "$T"/gateway.*.err "$T/garage/garage.log"; do
            [[ -s $f ]] && { echo "--- last lines of $f" >&2; tail -n 30 "$f" >&2; }
        done
    fi
    stop_pid "$GW_PID"; GW_PID=""
    stop_pid "$GA_PID"; GA_PID=""
    if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "KEEP_TMP=1: left $T in place" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Source files (SIZE, BIG, SMALL), one local download of SIZE for the check, and Garage's copies,
# kept until its block GC: per round 2 puts of SIZE through the gateway and 2 direct (counted as 6:
# a margin for Garage's metadata and GC delay); the RSS uploads through the gateway, twice.
need_mib=$((2 * SIZE + BIG + SMALL + 6 * (WARMUP + RUNS) * SIZE + 2 * (1 + RSS_SFTP) * (BIG + SMALL) + 256))
avail_kib=$(df -Pk "$T" | awk 'NR == 2 { print $4 }')
((avail_kib / 1024 >= need_mib)) || die "$T has $((avail_kib / 1024)) MiB free, need about $need_mib MiB (smaller BENCH_*_MIB?)"

# ---------------------------------------------------------------------------- machine, versions
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "garage:  $("$GARAGE" --version 2>&1 | head -1) ($GARAGE)"
echo "client:  $(ssh -V 2>&1); $(curl --version | head -1 | cut -d' ' -f1-2,4-5)"
echo "gateway: $BIN ($(date -u -r "$BIN" '+built %Y-%m-%d %H:%M UTC'); working tree: git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(git -C "$ROOT" status --porcelain -- gateway certs config Cargo.toml Cargo.lock 2>/dev/null | wc -l) locally modified source files)"
echo "temp:    $T (filesystem $(df -P "$T" | awk 'NR == 2 { print $1 }'), $((avail_kib / 1024)) MiB free, about $need_mib MiB needed)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-min load average at start; other work on the machine skews the figures)"

# ---------------------------------------------------------------------------- helpers
# CLK_TCK, cpu_ticks, vm_kib, mb, mib, median, vals, ratio: benches/lib.sh
now() { date +%s.%N; }
free_ports() { # free_ports N: N distinct free loopback ports, all bound to port 0 at once, then released
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
cpu_s() { awk -v t="$1" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }'; }   # ticks -> s
write_private() { (umask 077; cat >"$1"); chmod 600 "$1"; }   # write_private FILE <content

# ---------------------------------------------------------------------------- Garage
GD=$T/garage
mkdir -p "$GD"
read -r S3_PORT RPC_PORT ADMIN_PORT <<<"$(free_ports 3)"
write_private "$GD/garage.toml" <<EOF
# Benchmark configuration (generated by benches/s3.sh; as tests/src/s3.rs).
metadata_dir = "$GD/meta"
data_dir = "$GD/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$(openssl rand -hex 24)"
EOF
garage_cli() { RUST_LOG=garage=warn "$GARAGE" -c "$GD/garage.toml" "$@"; }
RUST_LOG=garage=warn "$GARAGE" -c "$GD/garage.toml" server >>"$GD/garage.log" 2>&1 </dev/null &
GA_PID=$!
for ((i = 0; i < STARTUP_TIMEOUT * 10; i++)); do
    garage_cli status >/dev/null 2>&1 && break
    kill -0 "$GA_PID" 2>/dev/null || die "the Garage server exited during start-up"
    sleep 0.1
done
garage_cli status >/dev/null 2>&1 || die "\`garage status\` did not succeed within ${STARTUP_TIMEOUT}s"
NODE=$(garage_cli node id -q | cut -d@ -f1)
garage_cli layout assign -z dc1 -c 100G "$NODE" >/dev/null
garage_cli layout apply --version 1 >/dev/null
garage_cli json-api CreateKey '{"name":"gateway-bench"}' >"$GD/key.json"
chmod 600 "$GD/key.json"
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$GD/key.json" "$1"; }
S3_KEY_ID=$(json_field accessKeyId)
S3_SECRET=$(json_field secretAccessKey)
garage_cli key allow --create-bucket "$S3_KEY_ID" >/dev/null
garage_cli bucket create "$BUCKET" >/dev/null
garage_cli bucket allow --read --write --owner "$BUCKET" --key "$S3_KEY_ID" >/dev/null
S3_ENDPOINT=http://127.0.0.1:$S3_PORT
echo "== garage pid $GA_PID, S3 API $S3_ENDPOINT (region garage), bucket $BUCKET, key $S3_KEY_ID (sqlite metadata, compression none, replication 1)"

# ---------------------------------------------------------------------------- gateway material
M=$T/material
mkdir -p "$M" "$M/ssh" "$M/keys" "$M/audit" "$M/s3"
(
    cd "$M"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 2 \
        -subj "/CN=gateway bench CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -subj "/CN=localhost" \
        -keyout server.key -out server.csr 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 2 \
        -extfile server.ext -out server.crt 2>/dev/null
    cat server.crt ca.pem >server.pem   # chain: leaf, then CA
    chmod 600 ca.key server.key
) || die "openssl could not make the CA and server certificate"
CA=$M/ca.pem
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$M/ssh/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$M/ssh/client"
"$BIN" keys tenant "$M/keys/$TENANT.key" >/dev/null
"$BIN" keys audit "$M/audit/checkpoint.key" >/dev/null
head -c 32 /dev/urandom | write_private "$M/keys/$TENANT.sse-c"
printf '%s' "$S3_KEY_ID" | write_private "$M/s3/access_key_id"
printf '%s' "$S3_SECRET" | write_private "$M/s3/secret_access_key"
SSEC_B64=$(base64 -w0 <"$M/keys/$TENANT.sse-c")
SSEC_MD5=$(openssl dgst -md5 -binary <"$M/keys/$TENANT.sse-c" | base64 -w0)
"$BIN" users new --name bench --tenant "$TENANT" --home / --permissions all >"$M/user.toml" 2>"$M/user.token"
TOKEN_ID=$(sed -n 's/^id = "\(.*\)"$/\1/p' "$M/user.toml")
TOKEN_SHA=$(sed -n 's/^sha256 = "\(.*\)"$/\1/p' "$M/user.toml")
TOKEN=$(tail -n 1 "$M/user.token")
[[ -n $TOKEN_ID && -n $TOKEN_SHA && -n $TOKEN ]] || die "gateway users new: no token in its output"
printf 'Authorization: Bearer %s\n' "$TOKEN" | write_private "$M/auth.header"   # curl -H @file: not in ps
rm -f "$M/user.token"

GW_DATA=$T/gw-data
cat >"$T/gateway.toml" <<EOF
# Benchmark configuration (generated by benches/s3.sh).
mode = "production"
data_dir = "$GW_DATA"
shutdown_grace = "1s"

[https]
listen = "127.0.0.1:0"
cert = "$M/server.pem"
key = "$M/server.key"

[sftp]
listen = "127.0.0.1:0"
host_keys = ["$M/ssh/host_ed25519"]
connection_rate_per_source = 0

[storage]
backend = "local"

[audit]
signing_key = "$M/audit/checkpoint.key"

[[storages]]
name = "garage"
backend = "s3"
bucket = "$BUCKET"
region = "garage"
endpoint_url = "$S3_ENDPOINT"
force_path_style = true
access_key_id_file = "$M/s3/access_key_id"
secret_access_key_file = "$M/s3/secret_access_key"
# part_size (16MiB) and parts_in_flight (4): the defaults

[[tenants]]
name = "$TENANT"
key_file = "$M/keys/$TENANT.key"
storage = "garage"
prefix = "$PREFIX"
sse = "sse-c"
sse_c_key_file = "$M/keys/$TENANT.sse-c"

[[users]]
name = "bench"
tenant = "$TENANT"
home = "/"
permissions = ["all"]
authorized_keys = ["$(cat "$M/ssh/client.pub")"]

[[users.tokens]]
id = "$TOKEN_ID"
sha256 = "$TOKEN_SHA"
EOF
"$BIN" check-config --config "$T/gateway.toml" || die "gateway check-config rejects the generated configuration"

GW_HTTPS=""
GW_SFTP=""
GW_STARTS=0
start_gateway() {
    GW_STARTS=$((GW_STARTS + 1))
    local out=$T/gateway.$GW_STARTS.out err=$T/gateway.$GW_STARTS.err i
    : >"$out"
    # shellcheck disable=SC2086  # BENCH_GATEWAY_ENV: VAR=VALUE words for the gateway's environment
    env RUST_LOG="${RUST_LOG:-warn}" ${BENCH_GATEWAY_ENV:-} "$BIN" serve --config "$T/gateway.toml" >"$out" 2>"$err" &
    GW_PID=$!
    GW_HTTPS="" GW_SFTP=""
    for ((i = 0; i < STARTUP_TIMEOUT * 10; i++)); do
        GW_HTTPS=$(sed -n 's|^gateway listening on https://[^:]*:\([0-9]*\)/.*|\1|p' "$out")
        GW_SFTP=$(sed -n 's|^SFTP listening on [0-9.]*:\([0-9]*\).*|\1|p' "$out")
        [[ -n $GW_HTTPS && -n $GW_SFTP ]] && return 0
        kill -0 "$GW_PID" 2>/dev/null || { cat "$out" "$err" >&2; GW_PID=""; die "gateway exited during start-up"; }
        sleep 0.1
    done
    cat "$out" "$err" >&2
    die "gateway did not start within ${STARTUP_TIMEOUT}s"
}
stop_gateway() { stop_pid "$GW_PID"; GW_PID=""; }
gateway_alive() { # die with the exit status if the gateway is gone
    local rc=0
    kill -0 "$GW_PID" 2>/dev/null && return 0
    wait "$GW_PID" || rc=$?
    GW_PID=""
    die "the gateway exited (status $rc) during or right after $1"
}

start_gateway
echo "== gateway pid $GW_PID (production mode), HTTPS 127.0.0.1:$GW_HTTPS, SFTP 127.0.0.1:$GW_SFTP; tenant $TENANT on s3://$BUCKET/$PREFIX, sse-c"
neg=$(timeout 10 openssl s_client -connect "127.0.0.1:$GW_HTTPS" -servername localhost -CAfile "$CA" -brief </dev/null 2>&1 |
    sed -n 's/^\(Protocol version\|Ciphersuite\|Verification\): *//p' | paste -sd' ' -) || true
echo "   gateway TLS: ${neg:-(openssl s_client unavailable)}"

# ---------------------------------------------------------------------------- clients
CURL=(curl -sS --fail --max-time "$XFER_MAX_TIME" --cacert "$CA" --http1.1 -H "@$M/auth.header")
gw_url() { echo "https://localhost:$GW_HTTPS/v1/files/$1"; }
gw_resolve() { echo "localhost:$GW_HTTPS:127.0.0.1"; }
SFTP=(sftp -v -F /dev/null -i "$M/ssh/client" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o ControlMaster=no)

# Direct client: boto3 (the AWS SDK for Python, as tests/src/s3.rs uses), SSE-C with the tenant's
# key. (rclone and the Go SDKs refuse to send SSE-C keys over plain HTTP, and Garage here serves
# plain HTTP on loopback, as the gateway uses it.) Credentials and the key are read from the
# 0600 files, not passed on the command line. Only the transfer call is timed (not the Python
# start-up and boto3 import), and its CPU is the process's getrusage over that call.
cat >"$T/direct.py" <<'PYEOF'
# Direct S3 client of benches/s3.sh: put FILE KEY | get KEY OUT [nokey]; prints "seconds cpu_seconds".
import resource, sys, time
import boto3, botocore.config
from boto3.s3.transfer import TransferConfig

endpoint, bucket, id_file, secret_file, key_file, part, conc, op = sys.argv[1:9]
args = sys.argv[9:]
read = lambda p: open(p, "rb").read()
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="garage",
                  aws_access_key_id=read(id_file).decode().strip(),
                  aws_secret_access_key=read(secret_file).decode().strip(),
                  config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
ssec = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": read(key_file)}
if op == "get" and args[2:] == ["nokey"]:
    ssec = {}

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

t0, c0 = time.monotonic(), cpu()
if op == "put":
    # upload_file: multipart above the threshold, `conc` parts at once, as the gateway's parts_in_flight
    s3.upload_file(args[0], bucket, args[1], ExtraArgs=ssec,
                   Config=TransferConfig(multipart_threshold=int(part), multipart_chunksize=int(part),
                                         max_concurrency=int(conc), use_threads=True))
elif op == "get":
    # one GetObject stream, as the gateway reads an object (and as curl reads the gateway)
    body = s3.get_object(Bucket=bucket, Key=args[0], **ssec)["Body"]
    with open(args[1], "wb") as f:
        for chunk in body.iter_chunks(1 << 20):
            f.write(chunk)
else:
    sys.exit("unknown op " + op)
print("%.3f %.2f" % (time.monotonic() - t0, cpu() - c0))
PYEOF
DIRECT=(env AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null python3 "$T/direct.py" "$S3_ENDPOINT" "$BUCKET"
    "$M/s3/access_key_id" "$M/s3/secret_access_key" "$M/keys/$TENANT.sse-c" $((PART_MIB << 20)) "$CONCURRENCY")
echo "   direct client: boto3 $(python3 -c 'import boto3, botocore; print(boto3.__version__ + ", botocore " + botocore.__version__)'), endpoint $S3_ENDPOINT, path style, SSE-C AES256 with the tenant's key"
echo "     put: s3.upload_file(FILE, '$BUCKET', 'direct/NAME', TransferConfig(multipart_threshold = multipart_chunksize = ${PART_MIB} MiB, max_concurrency = $CONCURRENCY))"
echo "     get: s3.get_object('$BUCKET', '${PREFIX}NAME') read in 1 MiB chunks to /dev/null (one GET stream, as curl from the gateway)"
echo "   gateway clients: ${CURL[*]::8} ... -T FILE | -o /dev/null ;  sftp -b BATCH (OpenSSH defaults: cipher, kex)"

# ---------------------------------------------------------------------------- files
SRC=$T/src.bin
SRC_BIG=$T/big.bin
SRC_SMALL=$T/small.bin
echo "== making ${SIZE}, ${BIG} and ${SMALL} MiB random files"
head -c $((SIZE * 1048576)) /dev/urandom >"$SRC"
head -c $((BIG * 1048576)) /dev/urandom >"$SRC_BIG"
head -c $((SMALL * 1048576)) /dev/urandom >"$SRC_SMALL"
SRC_SHA=$(sha256sum "$SRC" | cut -d' ' -f1)
SIZE_BYTES=$((SIZE * 1048576))

# ---------------------------------------------------------------------------- one transfer
# transfer KIND FILE NAME [OUT] -> SPEED (bytes/s), SECS, GW_CPU, GA_CPU, CL_CPU (CPU s of the
# gateway, Garage and the client process tree during the transfer), COMMIT_S (HTTPS PUT only:
# seconds from curl's last body byte to the response: the last parts in flight,
# CompleteMultipartUpload and the digest object; "-" for the others).
#   gw-sftp-put FILE NAME: sftp put FILE /NAME (timed between `!date`s in the batch: no handshake)
#   gw-https-put FILE NAME, gw-https-get - NAME [OUT]: curl (time_total: one request)
#   direct-put FILE NAME: boto3 upload_file FILE -> bucket/direct/NAME (the call alone)
#   direct-get - NAME [OUT]: boto3 get_object bucket/<prefix>NAME, streamed (the call alone)
SFTP_CIPHER="?"
transfer() {
    local kind=$1 file=$2 name=$3 out=${4:-/dev/null} gw0 gw1 ga0 ga1 t0 t1 res code size total want
    COMMIT_S=-
    sync   # no dirty pages left over from the previous transfer
    gw0=$(cpu_ticks "$GW_PID"); ga0=$(cpu_ticks "$GA_PID")
    case $kind in
        gw-sftp-put)
            rm -f "$T/t0" "$T/t1"
            printf '%s\n' "!date +%s.%N >$T/t0" "put $file /$name" "!date +%s.%N >$T/t1" >"$T/batch"
            /usr/bin/time -f '%U %S' -o "$T/client.time" timeout "$XFER_MAX_TIME" \
                "${SFTP[@]}" -P "$GW_SFTP" -b "$T/batch" bench@127.0.0.1 >"$T/sftp.out" 2>"$T/sftp.err" ||
                { tail -n 20 "$T/sftp.out" "$T/sftp.err" >&2; gateway_alive "sftp put"; die "sftp put $name failed"; }
            [[ -s $T/t0 && -s $T/t1 ]] || die "sftp put $name: no timestamps"
            t0=$(<"$T/t0"); t1=$(<"$T/t1")
            SECS=$(secs_between "$t0" "$t1")
            SFTP_CIPHER=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' "$T/sftp.err" | head -1)
            ;;
        gw-https-put)
            # -v --trace-time: when the last body byte went out and when the response came back
            res=$(/usr/bin/time -f '%U %S' -o "$T/client.time" "${CURL[@]}" -v --trace-time --resolve "$(gw_resolve)" -H 'Expect:' \
                -T "$file" -o "$T/put.resp" -w '%{http_code} %{size_upload} %{time_total}' "$(gw_url "$name")" 2>"$T/curl.trace") ||
                { grep -v -i '^[0-9:.]* > authorization' "$T/curl.trace" | tail -n 20 >&2; cat "$T/put.resp" >&2 2>/dev/null
                  gateway_alive "HTTPS PUT"; die "HTTPS PUT $name failed"; }
            read -r code size total <<<"$res"
            COMMIT_S=$(awk '
                function secs(t,  a) { split(t, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
                / \* We are completely uploaded and fine/ { up = secs($1) }
                / < HTTP\/1\.1 [0-9]+/ { resp = secs($1) }
                END { d = resp - up; if (d < 0) d += 86400; if (up == "" || resp == "") print "?"; else printf "%.2f", d }' "$T/curl.trace")
            rm -f "$T/curl.trace"   # it holds the Authorization header
            [[ $size == "$(stat -c %s "$file")" ]] || die "HTTPS PUT $name: sent $size bytes, the file has $(stat -c %s "$file")"
            want=$(sha256sum "$file" | cut -d' ' -f1)
            [[ $file == "$SRC" ]] && want=$SRC_SHA
            grep -q "\"sha256\":\"$want\"" "$T/put.resp" || die "HTTPS PUT $name ($code): the receipt lacks the source SHA-256: $(cat "$T/put.resp")"
            SECS=$total
            ;;
        gw-https-get)
            res=$(/usr/bin/time -f '%U %S' -o "$T/client.time" "${CURL[@]}" --resolve "$(gw_resolve)" \
                -o "$out" -w '%{http_code} %{size_download} %{time_total}' "$(gw_url "$name")") ||
                { gateway_alive "HTTPS GET"; die "HTTPS GET $name failed"; }
            read -r code size total <<<"$res"
            [[ $size == "$SIZE_BYTES" ]] || die "HTTPS GET $name: got $size bytes, expected $SIZE_BYTES"
            SECS=$total
            ;;
        direct-put)
            res=$(timeout "$XFER_MAX_TIME" "${DIRECT[@]}" put "$file" "direct/$name" 2>"$T/direct.err") ||
                { cat "$T/direct.err" >&2; die "direct put $name failed"; }
            read -r SECS DIRECT_CPU <<<"$res"
            ;;
        direct-get)
            res=$(timeout "$XFER_MAX_TIME" "${DIRECT[@]}" get "$PREFIX$name" "$out" 2>"$T/direct.err") ||
                { cat "$T/direct.err" >&2; die "direct get $name failed"; }
            read -r SECS DIRECT_CPU <<<"$res"
            ;;
        *) die "transfer: unknown kind $kind" ;;
    esac
    gateway_alive "$kind $name"
    gw1=$(cpu_ticks "$GW_PID"); ga1=$(cpu_ticks "$GA_PID")
    local bytes=$SIZE_BYTES
    [[ $file != - ]] && bytes=$(stat -c %s "$file")
    SPEED=$(awk -v n="$bytes" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }')
    GW_CPU=$(cpu_s $((gw1 - gw0))); GA_CPU=$(cpu_s $((ga1 - ga0)))
    [[ $kind == direct-* ]] && GW_CPU=0.00
    if [[ $kind == direct-* ]]; then CL_CPU=$DIRECT_CPU
    else CL_CPU=$(awk 'END { printf "%.2f", $(NF - 1) + $NF }' "$T/client.time"); fi
}

# ---------------------------------------------------------------------------- throughput runs
declare -A SPEEDS GWC GAC CLC SECSS
COMMITS=""
STEPS=("sftp gw-sftp-put" "sftp direct-put" "https-put gw-https-put" "https-put direct-put"
    "https-get gw-https-get" "https-get direct-get")
echo
echo "== throughput: ${SIZE} MiB, ${WARMUP} warm-up round(s) (w, not counted), then ${RUNS} rounds; MB/s = 10^6 bytes/s"
echo "   gw SFTP put: first to last byte of the put incl. the close (the gateway completes the multipart upload"
echo "   before answering it), handshake excluded; gw HTTPS: curl's time_total of the one request (TLS handshake"
echo "   included); direct: the boto3 call alone. CPU s: gateway / Garage / client (process tree; boto3: getrusage over the call)"
echo "   commit s (HTTPS PUT): from curl's last body byte to the gateway's response (last parts, complete, digest object)"
printf '%-5s %-10s %-13s %9s %8s %8s %8s %9s\n' round compare path "MB/s" "gw CPU" "garage" "client" "commit s"
for ((r = 1 - WARMUP; r <= RUNS; r++)); do
    for step in "${STEPS[@]}"; do
        read -r cmp kind <<<"$step"
        case $kind in
            gw-sftp-put) transfer "$kind" "$SRC" sftp.bin ;;
            gw-https-put) transfer "$kind" "$SRC" https.bin ;;
            gw-https-get) transfer "$kind" - https.bin ;;
            direct-put) transfer "$kind" "$SRC" big.bin ;;
            direct-get) transfer "$kind" - https.bin ;;
        esac
        label=$r; ((r < 1)) && label=w
        printf '%-5s %-10s %-13s %9s %8s %8s %8s %9s\n' "$label" "$cmp" "$kind" "$(mb "$SPEED")" "$GW_CPU" "$GA_CPU" "$CL_CPU" "$COMMIT_S"
        ((r < 1)) && continue
        side=gw; [[ $kind == direct-* ]] && side=direct
        k=$cmp.$side
        SPEEDS[$k]+="$SPEED "; GWC[$k]+="$GW_CPU "; GAC[$k]+="$GA_CPU "; CLC[$k]+="$CL_CPU "; SECSS[$k]+="$SECS "
        [[ $kind == gw-https-put && $COMMIT_S != "?" ]] && COMMITS+="$COMMIT_S "
    done
done
echo "   SFTP cipher negotiated (OpenSSH client default): $SFTP_CIPHER"

echo
echo "== correctness: SHA-256 against the source ($SRC_SHA)"
check() { # check LABEL FILE
    local got
    got=$(sha256sum "$2" | cut -d' ' -f1)
    rm -f "$2"
    [[ $got == "$SRC_SHA" ]] || die "$1: SHA-256 $got, the source is $SRC_SHA"
    echo "   $1: OK"
}
transfer gw-https-get - https.bin "$T/check.bin";  check "gateway HTTPS GET of its HTTPS upload" "$T/check.bin"
transfer gw-https-get - sftp.bin "$T/check.bin";   check "gateway HTTPS GET of its SFTP upload" "$T/check.bin"
transfer direct-get - sftp.bin "$T/check.bin";     check "boto3 GET (SSE-C key) of the gateway's SFTP upload" "$T/check.bin"
"${DIRECT[@]}" get direct/big.bin "$T/check.bin" >/dev/null 2>"$T/direct.err" || { cat "$T/direct.err" >&2; die "direct get direct/big.bin failed"; }
check "boto3 GET of its own upload" "$T/check.bin"
if "${DIRECT[@]}" get "${PREFIX}https.bin" "$T/nokey.bin" nokey >/dev/null 2>"$T/direct.err" || [[ -s $T/nokey.bin ]]; then
    die "Garage served the gateway's object WITHOUT the SSE-C key: it is not SSE-C encrypted"
fi
rm -f "$T/nokey.bin"
echo "   boto3 GET of the gateway's object without the SSE-C key: refused ($(grep -o 'An error occurred ([A-Za-z]*)' "$T/direct.err" | head -1 || echo error)), as it should be"

# ---------------------------------------------------------------------------- peak RSS
# VmHWM is a lifetime high-water mark: a fresh gateway process for every measurement.
declare -A PEAK IDLE RSPEED
RSS_KINDS=(gw-https-put)
((RSS_SFTP)) && RSS_KINDS+=(gw-sftp-put)
echo
echo "== gateway peak RSS (VmHWM), fresh process per upload: ${SMALL} MiB vs ${BIG} MiB"
for kind in "${RSS_KINDS[@]}"; do
    for which in small big; do
        file=$SRC_SMALL; [[ $which == big ]] && file=$SRC_BIG
        stop_gateway
        start_gateway
        sleep 1
        IDLE[$kind.$which]=$(vm_kib "$GW_PID" VmHWM)
        transfer "$kind" "$file" "rss-$which.bin"
        PEAK[$kind.$which]=$(vm_kib "$GW_PID" VmHWM)
        RSPEED[$kind.$which]=$SPEED
        printf '   %-13s %6s MiB: idle %6s MiB, peak %6s MiB, RSS after %6s MiB (%s MB/s, gateway CPU %s s, Garage CPU %s s, commit %s s)\n' "$kind" \
            "$(stat -c %s "$file" | awk '{ print $1 / 1048576 }')" "$(mib "${IDLE[$kind.$which]}")" \
            "$(mib "${PEAK[$kind.$which]}")" "$(mib "$(vm_kib "$GW_PID" VmRSS)")" "$(mb "$SPEED")" "$GW_CPU" "$GA_CPU" "$COMMIT_S"
    done
done

# ---------------------------------------------------------------------------- summary
label_of() { case $1 in sftp) echo "SFTP put (1)" ;; https-put) echo "HTTPS PUT (2)" ;; https-get) echo "HTTPS GET (3)" ;; esac; }
echo
echo "== summary (${SIZE} MiB, ${RUNS} rounds, medians; gateway on Garage with SSE-C vs boto3 direct to Garage, same key)"
printf '| %-14s | %9s | %9s | %7s | %-16s | %15s | %15s | %15s |\n' transfer "gw MB/s" "dir MB/s" "gw/dir" "goal >= ${GOAL}x" \
    "gw CPU s" "garage CPU s" "client CPU s"
printf '| %-14s | %9s | %9s | %7s | %-16s | %15s | %15s | %15s |\n' "" "" "" "" "" "(gw)" "gw / direct" "gw / direct"
printf '|----------------|-----------|-----------|---------|------------------|-----------------|-----------------|-----------------|\n'
declare -A MET
for cmp in sftp https-put https-get; do
    g=$(vals "${SPEEDS[$cmp.gw]}" | median); d=$(vals "${SPEEDS[$cmp.direct]}" | median)
    met=$(awk -v g="$g" -v d="$d" -v goal="$GOAL" 'BEGIN { print (g >= goal * d ? "met" : "NOT met") }')
    MET[$cmp]=$met
    printf '| %-14s | %9s | %9s | %7s | %-16s | %15s | %15s | %15s |\n' "$(label_of "$cmp")" "$(mb "$g")" "$(mb "$d")" \
        "$(ratio "$g" "$d")" "$met" "$(vals "${GWC[$cmp.gw]}" | median)" \
        "$(vals "${GAC[$cmp.gw]}" | median) / $(vals "${GAC[$cmp.direct]}" | median)" \
        "$(vals "${CLC[$cmp.gw]}" | median) / $(vals "${CLC[$cmp.direct]}" | median)"
done
echo
for cmp in sftp https-put https-get; do
    g=$(vals "${SPEEDS[$cmp.gw]}" | median); d=$(vals "${SPEEDS[$cmp.direct]}" | median)
    echo "goal gateway >= ${GOAL}x direct, $(label_of "$cmp"): ${MET[$cmp]} ($(ratio "$g" "$d"); all rounds gw: $(for s in ${SPEEDS[$cmp.gw]}; do printf '%s ' "$(mb "$s")"; done)/ direct: $(for s in ${SPEEDS[$cmp.direct]}; do printf '%s ' "$(mb "$s")"; done)MB/s)"
done
if [[ -n $COMMITS ]]; then
    echo "HTTPS PUT commit (last body byte -> response: last parts in flight, CompleteMultipartUpload, digest object):"
    printf '   median %.2f s of a median %.2f s request (rounds: %s)\n' "$(vals "$COMMITS" | median)" "$(vals "${SECSS[https-put.gw]}" | median)" "${COMMITS% }"
fi
echo
printf '| %-22s | %12s | %12s | %11s | %-22s |\n' "gateway peak RSS" "${SMALL} MiB" "${BIG} MiB" "big / small" "goal: big within 5%"
printf '|------------------------|--------------|--------------|-------------|------------------------|\n'
for kind in "${RSS_KINDS[@]}"; do
    s=${PEAK[$kind.small]}; b=${PEAK[$kind.big]}
    printf '| %-22s | %8s MiB | %8s MiB | %10sx | %-22s |\n' "$kind (VmHWM)" "$(mib "$s")" "$(mib "$b")" \
        "$(awk -v s="$s" -v b="$b" 'BEGIN { printf "%.3f", b / s }')" \
        "$(awk -v s="$s" -v b="$b" -v t="$RSS_TOLERANCE" 'BEGIN { print (b <= t * s ? "met" : "NOT met") }')"
done
printf '| %-22s | %8s MiB | %8s MiB | %11s | %-22s |\n' "idle after start-up" "$(mib "${IDLE[gw-https-put.small]}")" "$(mib "${IDLE[gw-https-put.big]}")" "-" ""
echo
echo "garage: $(du -sh "$GD/data" | cut -f1) in its data dir at the end (old versions' blocks wait for its GC)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "done; stopping servers and removing $T"
