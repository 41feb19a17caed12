#!/usr/bin/env bash
# Scale-out over S3: gateway nodes are stateless, so any node serves any file.
#
#   Garage: three nodes on loopback (replication_factor = 3, consistency_mode = "consistent":
#           a write needs 2 of 3 nodes), one access key, one bucket.
#   HAProxy (TCP mode, one process), three frontends:
#     s3     -> the three Garage S3 APIs (roundrobin, TCP connect checks). Both gateways use this
#               one endpoint, so their configurations are identical and a dead Garage node is
#               skipped by the balancer (any Garage node coordinates any request) instead of
#               failing every request of the gateway that happened to point at it.
#     https  -> the two gateways' HTTPS listeners (roundrobin)
#     sftp   -> the two gateways' SFTP listeners (roundrobin)
#     Gateway servers are checked with HTTP GET /readyz on each node's admin listener, so a node
#     that starts draining (SIGTERM) or loses its audit trail or storage is taken out of rotation
#     before its listeners close; connect failures are redispatched to the other node.
#   Gateways A and B: one configuration (same TLS certificate and key, SSH host key, tenant key,
#     SSE-C key, audit signing key, users), differing only in their listen ports, data_dir and audit node name (so
#     each node has its own audit trail).
#
# Checks (each PASS or FAIL in the summary; the exit status is non-zero on any FAIL):
#   cross-node: HTTPS PUT on A -> GET on B (multipart and single-part objects, Repr-Digest on a
#     HEAD), SFTP put on A -> get on B, SFTP put on B -> HTTPS GET on A, SFTP rename on A seen on
#     B, HTTPS DELETE on B seen on A, a listing page from A continued on B with A's cursor, and
#     one SSH host key on both nodes (OpenSSH with StrictHostKeyChecking=yes, one HostKeyAlias).
#   balancer: SCALEOUT_ROUNDS rounds of HTTPS PUT + GET and SFTP put + get through HAProxy,
#     identical SHA-256, both nodes used (from their audit trails).
#   storage drill: SCALEOUT_UPLOADS uploads of 4-16 MiB (every 4th over SFTP), SCALEOUT_PARALLEL
#     at once, through HAProxy; one Garage node is killed (SIGKILL) after a quarter of them have
#     finished. Every acknowledged upload (HTTPS 201, sftp exit 0) must download, through the
#     node that did not take it, with its SHA-256 and a `completed` audit record on the node that
#     took it; every failed one must have failed cleanly (an HTTP status / an sftp error, not a
#     timeout or a reset) and have a `failed` record.
#   gateway drill: SCALEOUT_GW_UPLOADS more uploads through HAProxy; gateway B gets SIGTERM after a
#     quarter of them: same checks, then B is started again and HAProxy sends it traffic again.
#   quorum drill: SCALEOUT_QUORUM_UPLOADS uploads straight to A and B in turn (HAProxy takes both
#     out while their /readyz reports the storage down); Garage node 1 is killed too after a
#     quarter, leaving one node of three: writes must fail, each cleanly and with a `failed`
#     record; then nodes 1 and 2 are started again, the cluster must heal, every upload
#     acknowledged before the kill must read back through the other node, and an upload through
#     HAProxy must succeed again.
#   audit: both trails pass `gateway audit verify`, and every `started` / `intent` record in them
#     has exactly one outcome; each node shipped its trail to the audit bucket ([audit.ship],
#     through the storage and quorum drills) and `gateway audit verify-shipped` finds all of it.
#
# Usage (from anywhere):   bash benches/scaleout.sh            (about 1-2 minutes)
# Environment:
#   GATEWAY_BIN=...        gateway binary (default: target/debug/gateway after `cargo build -p gateway`;
#                          GATEWAY_PROFILE=release for target/release/gateway after `cargo build --release`)
#   SKIP_BUILD=1           do not run cargo build (use the binary as it is)
#   GARAGE_BIN=...         Garage binary (default: `garage` on PATH, else ~/.cargo/bin/garage)
#   HAPROXY_BIN=...        HAProxy binary (default: `haproxy` on PATH, else /usr/sbin/haproxy)
#   SCALEOUT_UPLOADS=40    uploads in the storage drill
#   SCALEOUT_GW_UPLOADS=20 uploads in the gateway drill
#   SCALEOUT_QUORUM_UPLOADS=16 uploads in the quorum drill
#   SCALEOUT_PARALLEL=4    uploads at once in the drills
#   SCALEOUT_ROUNDS=8      balancer rounds
#   SCALEOUT_TMPDIR        where the temporary directory is made (default $TMPDIR or /tmp)
#   XFER_MAX_TIME=120      seconds any one transfer may take (beyond it: a hang, counted unclean)
#   KEEP_TMP=1             keep the temporary directory (configs, logs, trails)
#
# Everything listens on 127.0.0.1 only. Garage's, HAProxy's and the gateways' ports are free ports
# found by binding port 0 (python3) and releasing them: HAProxy's configuration names the
# gateways' ports, and a restarted gateway must come back on the same ones. Everything started
# here is stopped, and the temporary directory removed, on exit.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # die, stop_pid

UPLOADS=${SCALEOUT_UPLOADS:-40}
GW_UPLOADS=${SCALEOUT_GW_UPLOADS:-20}
Q_UPLOADS=${SCALEOUT_QUORUM_UPLOADS:-16}
PARALLEL=${SCALEOUT_PARALLEL:-4}
ROUNDS=${SCALEOUT_ROUNDS:-8}
XFER_MAX_TIME=${XFER_MAX_TIME:-120}
PROFILE=${GATEWAY_PROFILE:-debug}
STARTUP_TIMEOUT=60   # seconds a server gets to come up
STOP_TIMEOUT=30      # seconds a server gets to stop before SIGKILL (above the gateways' shutdown_grace)
BUCKET=scaleout
TENANT=acme
PREFIX=acme/

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $PROFILE == debug || $PROFILE == release ]] || die "GATEWAY_PROFILE must be debug or release (got '$PROFILE')"
BIN=${GATEWAY_BIN:-$TARGET_DIR/$PROFILE/gateway}
[[ -n ${GATEWAY_BIN:-} ]] && SKIP_BUILD=1
GARAGE=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
HAPROXY=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}

for v in UPLOADS GW_UPLOADS Q_UPLOADS PARALLEL ROUNDS XFER_MAX_TIME; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((UPLOADS >= 4 && GW_UPLOADS >= 4 && Q_UPLOADS >= 4)) || die "SCALEOUT_UPLOADS, SCALEOUT_GW_UPLOADS and SCALEOUT_QUORUM_UPLOADS must be at least 4"

extra=""
[[ -n ${GATEWAY_BIN:-} ]] && extra+="GATEWAY_BIN=$GATEWAY_BIN "
[[ $PROFILE != debug ]] && extra+="GATEWAY_PROFILE=$PROFILE "
[[ ${SKIP_BUILD:-0} == 1 && -z ${GATEWAY_BIN:-} ]] && extra+="SKIP_BUILD=1 "
echo "command: ${extra}SCALEOUT_UPLOADS=$UPLOADS SCALEOUT_GW_UPLOADS=$GW_UPLOADS SCALEOUT_QUORUM_UPLOADS=$Q_UPLOADS SCALEOUT_PARALLEL=$PARALLEL SCALEOUT_ROUNDS=$ROUNDS bash benches/scaleout.sh   (cwd $ROOT)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"

# ---------------------------------------------------------------------------- prerequisites
[[ -x $GARAGE ]] || die "Garage not found ($GARAGE); install: cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite,lmdb"
[[ -x $HAPROXY ]] || die "HAProxy not found ($HAPROXY); install the Debian package: apt-get install haproxy"
for c in curl sftp ssh-keygen openssl python3 sha256sum base64 timeout; do
    command -v $c >/dev/null || die "$c is required"
done
python3 -c 'import boto3' 2>/dev/null || die "the python3 module boto3 is required (pip install boto3)"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    flag=""; [[ $PROFILE == release ]] && flag=--release
    echo "== cargo build ${flag:+$flag }-p gateway (no-op when up to date)"
    (cd "$ROOT" && cargo build $flag -p gateway --quiet) || die "cargo build failed; GATEWAY_BIN=... runs another binary"
fi
[[ -x $BIN ]] || die "$BIN missing"

T=$(mktemp -d "${SCALEOUT_TMPDIR:-${TMPDIR:-/tmp}}/gw-scaleout.XXXXXX")
declare -A GW_PID=([A]="" [B]="")
UPLOAD_PIDS=()
GA_PIDS=("" "" "")
HA_PID=""
cleanup() {
    local rc=$? f p
    set +e
    for p in "${UPLOAD_PIDS[@]}"; do kill "$p" 2>/dev/null; done   # uploads still running (after a failure)
    if ((rc != 0)); then
        for f in "$T"/gw-*.err "$T"/garage*/garage.log "$T/haproxy.log"; do
            [[ -s $f ]] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
        done
    fi
    for p in "${GW_PID[@]}"; do stop_pid "$p"; done
    stop_pid "$HA_PID"
    for p in "${GA_PIDS[@]}"; do stop_pid "$p"; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "KEEP_TMP=1: left $T in place" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Source files (the drills average 10 MiB an upload) and Garage's three copies of each object.
need_mib=$(((UPLOADS + GW_UPLOADS + Q_UPLOADS) * 10 * 4 + 512))
avail_kib=$(df -Pk "$T" | awk 'NR == 2 { print $4 }')
((avail_kib / 1024 >= need_mib)) || die "$T has $((avail_kib / 1024)) MiB free, need about $need_mib MiB (SCALEOUT_TMPDIR elsewhere, or fewer uploads)"
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "garage:  $("$GARAGE" --version 2>&1 | head -1); $("$HAPROXY" -v | head -1 | cut -d' ' -f1-3); $(curl --version | head -1 | cut -d' ' -f1-2); $(ssh -V 2>&1)"
echo "gateway: $BIN ($(date -u -r "$BIN" '+built %Y-%m-%d %H:%M UTC'); the tree is at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "temp:    $T"

# ---------------------------------------------------------------------------- helpers
START=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
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
write_private() { (umask 077; cat >"$1"); chmod 600 "$1"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

RESULTS=()   # "PASS|FAIL<TAB>check<TAB>detail"
FAILS=0
check() { # check PASS|FAIL NAME DETAIL
    RESULTS+=("$1	$2	$3")
    [[ $1 == PASS ]] || FAILS=$((FAILS + 1))
    printf '   %-4s %s: %s\n' "$1" "$2" "$3"
}
expect() { # expect NAME DETAIL COMMAND...: PASS if the command succeeds
    local name=$1 detail=$2
    shift 2
    if "$@"; then check PASS "$name" "$detail"; else check FAIL "$name" "$detail"; fi
}

# ---------------------------------------------------------------------------- Garage cluster
PH=$(now)
read -r -a GP <<<"$(free_ports 9)"   # s3, rpc, admin for each of the three nodes
RPC_SECRET=$(openssl rand -hex 32)
for i in 0 1 2; do
    d=$T/garage$i
    mkdir -p "$d"
    write_private "$d/garage.toml" <<EOF
# Node $i of the scale-out cluster (generated by benches/scaleout.sh; as tests/src/s3.rs, three nodes).
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "sqlite"
replication_factor = 3
consistency_mode = "consistent"
compression_level = "none"
rpc_bind_addr = "127.0.0.1:${GP[i * 3 + 1]}"
rpc_public_addr = "127.0.0.1:${GP[i * 3 + 1]}"
rpc_secret = "$RPC_SECRET"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:${GP[i * 3]}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:${GP[i * 3 + 2]}"
admin_token = "$(openssl rand -hex 24)"
EOF
    RUST_LOG=garage=warn "$GARAGE" -c "$d/garage.toml" server >>"$d/garage.log" 2>&1 </dev/null &
    GA_PIDS[i]=$!
done
garage_cli() { local i=$1; shift; RUST_LOG=garage=warn "$GARAGE" -c "$T/garage$i/garage.toml" "$@"; }
for i in 0 1 2; do
    for ((t = 0; t < STARTUP_TIMEOUT * 10; t++)); do
        garage_cli "$i" status >/dev/null 2>&1 && break
        kill -0 "${GA_PIDS[i]}" 2>/dev/null || die "Garage node $i exited during start-up"
        sleep 0.1
    done
    garage_cli "$i" status >/dev/null 2>&1 || die "Garage node $i: \`garage status\` did not succeed within ${STARTUP_TIMEOUT}s"
done
IDS=()
for i in 0 1 2; do IDS[i]=$(garage_cli "$i" node id -q); done
for i in 1 2; do garage_cli 0 node connect "${IDS[i]}" >/dev/null; done
for i in 0 1 2; do garage_cli 0 layout assign -z "dc$((i + 1))" -c 10G "${IDS[i]%@*}" >/dev/null; done
garage_cli 0 layout apply --version 1 >/dev/null
# Every node must see the three nodes up and every partition's quorum before the gateways probe.
healthy() {
    local i h
    for i in 0 1 2; do
        h=$(garage_cli "$i" json-api GetClusterHealth 2>/dev/null) || return 1
        python3 -c 'import json, sys; h = json.loads(sys.argv[1]); sys.exit(0 if h["status"] == "healthy" and h["storageNodesUp"] == 3 and h["partitionsAllOk"] == h["partitions"] else 1)' "$h" || return 1
    done
}
for ((t = 0; t < STARTUP_TIMEOUT * 5; t++)); do healthy && break; sleep 0.2; done
healthy || die "the Garage cluster did not become healthy within ${STARTUP_TIMEOUT}s: $(garage_cli 0 status 2>&1)"
garage_cli 0 json-api CreateKey '{"name":"gateway-scaleout"}' >"$T/key.json"
chmod 600 "$T/key.json"
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$T/key.json" "$1"; }
S3_KEY_ID=$(json_field accessKeyId)
S3_SECRET=$(json_field secretAccessKey)
garage_cli 0 key allow --create-bucket "$S3_KEY_ID" >/dev/null
garage_cli 0 bucket create "$BUCKET" >/dev/null
garage_cli 0 bucket allow --read --write --owner "$BUCKET" --key "$S3_KEY_ID" >/dev/null
# The audit bucket: each node ships its sealed trail segments there ([audit.ship]).
AUDIT_BUCKET="$BUCKET-audit"
garage_cli 0 bucket create "$AUDIT_BUCKET" >/dev/null
garage_cli 0 bucket allow --read --write --owner "$AUDIT_BUCKET" --key "$S3_KEY_ID" >/dev/null
echo "== garage: 3 nodes (pids ${GA_PIDS[*]}), S3 on 127.0.0.1:${GP[0]} :${GP[3]} :${GP[6]}, replication 3, consistent; bucket $BUCKET ($(since "$PH") s)"

# ---------------------------------------------------------------------------- gateway material (once, shared by both nodes)
PH=$(now)
M=$T/material
mkdir -p "$M/ssh" "$M/keys" "$M/audit" "$M/s3"
(
    cd "$M"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 60 \
        -subj "/CN=gateway scale-out CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -subj "/CN=localhost" \
        -keyout server.key -out server.csr 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 60 \
        -extfile server.ext -out server.crt 2>/dev/null
    cat server.crt ca.pem >server.pem
    chmod 600 ca.key server.key
) || die "openssl could not make the CA and server certificate"
CA=$M/ca.pem
ssh-keygen -q -t ed25519 -N '' -C scaleout-host -f "$M/ssh/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C scaleout-client -f "$M/ssh/client"
# One known_hosts line under one alias: every node (and the balancer) must show this key.
echo "gateway $(cut -d' ' -f1-2 "$M/ssh/host_ed25519.pub")" >"$M/known_hosts"
"$BIN" keys tenant "$M/keys/$TENANT.key" >/dev/null
"$BIN" keys audit "$M/audit/checkpoint.key" >/dev/null
[[ -s $M/audit/checkpoint.pub ]] || die "gateway keys audit wrote no checkpoint.pub"
head -c 32 /dev/urandom | write_private "$M/keys/$TENANT.sse-c"
printf '%s' "$S3_KEY_ID" | write_private "$M/s3/access_key_id"
printf '%s' "$S3_SECRET" | write_private "$M/s3/secret_access_key"
"$BIN" users new --name alice --tenant "$TENANT" --home / --permissions all >"$M/user.toml" 2>"$M/user.token"
TOKEN_ID=$(sed -n 's/^id = "\(.*\)"$/\1/p' "$M/user.toml")
TOKEN_SHA=$(sed -n 's/^sha256 = "\(.*\)"$/\1/p' "$M/user.toml")
TOKEN=$(tail -n 1 "$M/user.token")
[[ -n $TOKEN_ID && -n $TOKEN_SHA && -n $TOKEN ]] || die "gateway users new: no token in its output"
printf 'Authorization: Bearer %s\n' "$TOKEN" | write_private "$M/auth.header"   # curl -H @file: not in ps
rm -f "$M/user.token"

# ---------------------------------------------------------------------------- ports, configurations
read -r LB_S3 LB_HTTPS LB_SFTP A_HTTPS A_SFTP A_ADMIN B_HTTPS B_SFTP B_ADMIN <<<"$(free_ports 9)"
declare -A HTTPS_PORT=([A]=$A_HTTPS [B]=$B_HTTPS) SFTP_PORT=([A]=$A_SFTP [B]=$B_SFTP) ADMIN_PORT=([A]=$A_ADMIN [B]=$B_ADMIN)
for n in A B; do
    cat >"$T/gw-$n.toml" <<EOF
# Scale-out node $n (generated by benches/scaleout.sh): identical on every node except the
# listen ports (all nodes could share them on separate hosts) and data_dir (own audit trail).
mode = "production"
data_dir = "$T/gw-$n-data"
shutdown_grace = "20s"

[https]
listen = "127.0.0.1:${HTTPS_PORT[$n]}"
cert = "$M/server.pem"
key = "$M/server.key"

[sftp]
listen = "127.0.0.1:${SFTP_PORT[$n]}"
host_keys = ["$M/ssh/host_ed25519"]
# Behind a TCP balancer every connection comes from the balancer's address: the per-source
# limit would count all clients as one. HAProxy limits per client instead (see haproxy.cfg).
connection_rate_per_source = 0

[storage]
backend = "local"

[audit]
signing_key = "$M/audit/checkpoint.key"
checkpoint_interval = "5s"   # sealed segments every few seconds, so shipping runs through the drills

[audit.ship]
storage = "garage"
bucket = "$AUDIT_BUCKET"
interval = "2s"
# Nodes on separate hosts leave this out (the host name is the default); here both share one.
node = "gw-$n"

[admin]
listen = "127.0.0.1:${ADMIN_PORT[$n]}"

[[storages]]
name = "garage"
backend = "s3"
bucket = "$BUCKET"
region = "garage"
endpoint_url = "http://127.0.0.1:$LB_S3"
force_path_style = true
access_key_id_file = "$M/s3/access_key_id"
secret_access_key_file = "$M/s3/secret_access_key"
part_size = "5MiB"   # the minimum: the 4-16 MiB drill files are multipart uploads of 1-4 parts

[[tenants]]
name = "$TENANT"
key_file = "$M/keys/$TENANT.key"
storage = "garage"
prefix = "$PREFIX"
sse = "sse-c"
sse_c_key_file = "$M/keys/$TENANT.sse-c"

[[users]]
name = "alice"
tenant = "$TENANT"
home = "/"
permissions = ["all"]
authorized_keys = ["$(cat "$M/ssh/client.pub")"]

[[users.tokens]]
id = "$TOKEN_ID"
sha256 = "$TOKEN_SHA"
EOF
    "$BIN" check-config --config "$T/gw-$n.toml" >/dev/null || die "gateway check-config rejects $T/gw-$n.toml"
done
cmp -s <(grep -v -e listen -e data_dir -e '^# Scale-out node' -e '^node = ' "$T/gw-A.toml") <(grep -v -e listen -e data_dir -e '^# Scale-out node' -e '^node = ' "$T/gw-B.toml") ||
    die "the two gateway configurations differ beyond listen ports, data_dir and the audit node name"

cat >"$T/haproxy.cfg" <<EOF
# Generated by benches/scaleout.sh. TCP mode throughout: TLS and SSH end at the gateways.
global
    maxconn 1024
    stats socket $T/haproxy.sock mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout check 2s
    retries 3
    option redispatch          # a connect that fails is retried on another server

# Garage's S3 APIs: any node coordinates any request. TCP connect checks.
frontend s3
    bind 127.0.0.1:$LB_S3
    default_backend garage
backend garage
    balance roundrobin
    default-server check inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server g0 127.0.0.1:${GP[0]}
    server g1 127.0.0.1:${GP[3]}
    server g2 127.0.0.1:${GP[6]}

# The gateways: checked on their admin listener's /readyz (503 from the moment SIGTERM arrives,
# and when the audit trail or the storage fails), so draining nodes get no new connections.
frontend https
    bind 127.0.0.1:$LB_HTTPS
    default_backend gateways_https
backend gateways_https
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server A 127.0.0.1:$A_HTTPS check port $A_ADMIN inter 500ms fall 1 rise 2
    server B 127.0.0.1:$B_HTTPS check port $B_ADMIN inter 500ms fall 1 rise 2

frontend sftp
    bind 127.0.0.1:$LB_SFTP
    # the per-source connection rate limit the gateway cannot apply behind a balancer
    stick-table type ip size 100k expire 30s store conn_rate(1s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if { sc_conn_rate(0) gt 50 }
    default_backend gateways_sftp
backend gateways_sftp
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server A 127.0.0.1:$A_SFTP check port $A_ADMIN inter 500ms fall 1 rise 2
    server B 127.0.0.1:$B_SFTP check port $B_ADMIN inter 500ms fall 1 rise 2
EOF
"$HAPROXY" -c -q -f "$T/haproxy.cfg" || die "haproxy -c rejects $T/haproxy.cfg"
"$HAPROXY" -db -f "$T/haproxy.cfg" >>"$T/haproxy.log" 2>&1 </dev/null &
HA_PID=$!
haproxy_cmd() { # haproxy_cmd COMMAND: the stats socket's answer
    python3 - "$T/haproxy.sock" "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
out = b""
while chunk := s.recv(65536):
    out += chunk
print(out.decode(), end="")
EOF
}
server_state() { # server_state BACKEND SERVER: UP, DOWN, ... from `show stat`
    haproxy_cmd "show stat" | awk -F, -v b="$1" -v s="$2" '$1 == b && $2 == s { print $18 }'
}
server_sessions() { # server_sessions BACKEND SERVER: sessions so far (stot)
    haproxy_cmd "show stat" | awk -F, -v b="$1" -v s="$2" '$1 == b && $2 == s { print $8 }'
}
wait_state() { # wait_state BACKEND SERVER STATE SECONDS
    local t
    for ((t = 0; t < $4 * 10; t++)); do
        [[ $(server_state "$1" "$2" 2>/dev/null) == "$3"* ]] && return 0
        sleep 0.1
    done
    return 1
}

GW_STARTS=0
gw_start() { # gw_start A|B: serve, wait for /readyz 200
    local n=$1 t
    GW_STARTS=$((GW_STARTS + 1))
    RUST_LOG=${RUST_LOG:-warn} GATEWAY_LOG_FORMAT=json "$BIN" serve --config "$T/gw-$n.toml" >>"$T/gw-$n.out" 2>>"$T/gw-$n.err" </dev/null &
    GW_PID[$n]=$!
    for ((t = 0; t < STARTUP_TIMEOUT * 10; t++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ADMIN_PORT[$n]}/readyz" 2>/dev/null) == 200 ]] && return 0
        kill -0 "${GW_PID[$n]}" 2>/dev/null || { GW_PID[$n]=""; die "gateway $n exited during start-up"; }
        sleep 0.1
    done
    die "gateway $n was not ready within ${STARTUP_TIMEOUT}s"
}
gw_stop() { stop_pid "${GW_PID[$1]}"; GW_PID[$1]=""; }
gw_start A
gw_start B
for be in garage:g0 garage:g1 garage:g2 gateways_https:A gateways_https:B gateways_sftp:A gateways_sftp:B; do
    wait_state "${be%%:*}" "${be#*:}" UP 15 || die "HAProxy does not see ${be%%:*}/${be#*:} UP"
done
echo "== gateways A (pid ${GW_PID[A]}: https :$A_HTTPS sftp :$A_SFTP admin :$A_ADMIN) and B (pid ${GW_PID[B]}: https :$B_HTTPS sftp :$B_SFTP admin :$B_ADMIN)"
echo "   HAProxy pid $HA_PID: s3 :$LB_S3 -> garage x3, https :$LB_HTTPS, sftp :$LB_SFTP -> A, B (roundrobin, /readyz checks) ($(since "$PH") s)"
SETUP_S=$(since "$START")

# ---------------------------------------------------------------------------- clients
CURL=(curl -sS --max-time "$XFER_MAX_TIME" --cacert "$CA" -H "@$M/auth.header")
url() { echo "https://localhost:$1/v1/files/$2"; }                    # url PORT PATH
resolve() { echo "localhost:$1:127.0.0.1"; }
SFTP=(sftp -q -F /dev/null -i "$M/ssh/client" -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o HostKeyAlias=gateway
    -o UserKnownHostsFile="$M/known_hosts" -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o ControlMaster=no
    -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=6)
https_put() { # https_put PORT FILE NAME RESP: prints "http_code curl_rc"
    local code rc=0
    code=$("${CURL[@]}" --resolve "$(resolve "$1")" -H 'Expect:' -T "$2" -o "$4" -w '%{http_code}' "$(url "$1" "$3")" 2>"$4.err") || rc=$?
    echo "${code:-000} $rc"
}
https_get() { # https_get PORT NAME OUT: prints the HTTP status (000 on a transport error)
    "${CURL[@]}" --resolve "$(resolve "$1")" -o "$3" -w '%{http_code}' "$(url "$1" "$2")" 2>>"$T/curl.err" || true
}
sftp_batch() { # sftp_batch PORT BATCHFILE ERRFILE: sftp's exit status
    local rc=0
    timeout "$XFER_MAX_TIME" "${SFTP[@]}" -P "$1" -b "$2" alice@127.0.0.1 >"$3.out" 2>"$3" || rc=$?
    return $rc
}
sftp_put() { printf 'put %s /%s\n' "$2" "$3" >"$T/batch.$3"; sftp_batch "$1" "$T/batch.$3" "$T/sftp.$3.err"; }   # sftp_put PORT FILE NAME
sftp_get() { printf 'get /%s %s\n' "$2" "$3" >"$T/batch.get.$2"; sftp_batch "$1" "$T/batch.get.$2" "$T/sftp.get.$2.err"; }   # sftp_get PORT NAME OUT

mkfile() { head -c "$2" /dev/urandom >"$1"; }   # mkfile PATH BYTES
mkdir -p "$T/src" "$T/dl"

# ---------------------------------------------------------------------------- cross-node checks
PH=$(now)
echo
echo "== cross-node: write on one node, read on the other (direct ports, no balancer)"
MIB=1048576
mkfile "$T/src/x-multi.bin" $((12 * MIB + 12345))   # three 5 MiB parts
mkfile "$T/src/x-single.bin" $((MIB + 7))            # one PutObject
mkfile "$T/src/x-sftp-a.bin" $((9 * MIB + 3))
mkfile "$T/src/x-sftp-b.bin" $((6 * MIB + 5))

read -r code rc <<<"$(https_put "$A_HTTPS" "$T/src/x-multi.bin" x-multi.bin "$T/resp.x-multi")"
s=$(https_get "$B_HTTPS" x-multi.bin "$T/dl/x-multi.bin")
expect "https A->B multipart" "PUT on A $code, GET on B $s, 12 MiB in 3 parts, SHA-256 equal" \
    test "$code" = 201 -a "$s" = 200 -a "$(sha "$T/dl/x-multi.bin")" = "$(sha "$T/src/x-multi.bin")"
want=$(openssl dgst -sha256 -binary "$T/src/x-multi.bin" | base64 -w0)
got=$({ "${CURL[@]}" --resolve "$(resolve "$B_HTTPS")" -I "$(url "$B_HTTPS" x-multi.bin)" 2>>"$T/curl.err" || true; } | tr -d '\r' | sed -n 's/^repr-digest: sha-256=:\(.*\):$/\1/Ip')
expect "https HEAD on B" "Repr-Digest of A's multipart upload (from its digest object) matches the source" test "$got" = "$want"

read -r code rc <<<"$(https_put "$B_HTTPS" "$T/src/x-single.bin" x-single.bin "$T/resp.x-single")"
s=$(https_get "$A_HTTPS" x-single.bin "$T/dl/x-single.bin")
expect "https B->A single part" "PUT on B $code, GET on A $s, SHA-256 equal" \
    test "$code" = 201 -a "$s" = 200 -a "$(sha "$T/dl/x-single.bin")" = "$(sha "$T/src/x-single.bin")"

rc=0; sftp_put "$A_SFTP" "$T/src/x-sftp-a.bin" x-sftp-a.bin || rc=$?
rc2=0; sftp_get "$B_SFTP" x-sftp-a.bin "$T/dl/x-sftp-a.bin" || rc2=$?
expect "sftp A->B" "put on A (exit $rc), get on B (exit $rc2), SHA-256 equal, one host key (StrictHostKeyChecking=yes)" \
    test "$rc" = 0 -a "$rc2" = 0 -a "$(sha "$T/dl/x-sftp-a.bin" 2>/dev/null)" = "$(sha "$T/src/x-sftp-a.bin")"

rc=0; sftp_put "$B_SFTP" "$T/src/x-sftp-b.bin" x-sftp-b.bin || rc=$?
s=$(https_get "$A_HTTPS" x-sftp-b.bin "$T/dl/x-sftp-b.bin")
expect "sftp B -> https A" "put on B (exit $rc), HTTPS GET on A $s, SHA-256 equal" \
    test "$rc" = 0 -a "$s" = 200 -a "$(sha "$T/dl/x-sftp-b.bin")" = "$(sha "$T/src/x-sftp-b.bin")"

printf 'rename /x-sftp-a.bin /x-renamed.bin\n' >"$T/batch.rename"
rc=0; sftp_batch "$A_SFTP" "$T/batch.rename" "$T/sftp.rename.err" || rc=$?
s=$(https_get "$B_HTTPS" x-renamed.bin "$T/dl/x-renamed.bin")
s_old=$(https_get "$B_HTTPS" x-sftp-a.bin /dev/null)
expect "rename on A, seen on B" "sftp rename on A (exit $rc); on B: new name $s with the SHA-256, old name $s_old" \
    test "$rc" = 0 -a "$s" = 200 -a "$s_old" = 404 -a "$(sha "$T/dl/x-renamed.bin")" = "$(sha "$T/src/x-sftp-a.bin")"

s=$("${CURL[@]}" --resolve "$(resolve "$B_HTTPS")" -X DELETE -o /dev/null -w '%{http_code}' "$(url "$B_HTTPS" x-single.bin)" || true)
s_after=$(https_get "$A_HTTPS" x-single.bin /dev/null)
expect "delete on B, gone on A" "DELETE on B $s, GET on A $s_after" test "$s" = 204 -a "$s_after" = 404

# A listing page from A, continued on B with A's cursor (sealed with a key derived from the
# tenant key, which both nodes share).
for f in p1 p2 p3; do printf '%s' "$f" >"$T/src/$f"; https_put "$A_HTTPS" "$T/src/$f" "page/$f.txt" "$T/resp.$f" >/dev/null; done
"${CURL[@]}" --resolve "$(resolve "$A_HTTPS")" -o "$T/page1.json" "$(url "$A_HTTPS" 'page/?limit=2')" || true
next=$(python3 -c 'import json, sys, urllib.parse; n = json.load(open(sys.argv[1])).get("next"); print(urllib.parse.quote(n, safe="") if n else "")' "$T/page1.json" 2>/dev/null || true)
"${CURL[@]}" --resolve "$(resolve "$B_HTTPS")" -o "$T/page2.json" "$(url "$B_HTTPS" "page/?limit=2&after=$next")" || true
names=$(python3 -c 'import json, sys; print(" ".join(e["name"] for f in sys.argv[1:] for e in json.load(open(f))["entries"]))' "$T/page1.json" "$T/page2.json" 2>/dev/null || true)
expect "listing A -> B" "page 1 on A (limit 2), page 2 on B with A's cursor: [$names]" test -n "$next" -a "$names" = "p1.txt p2.txt p3.txt"
CROSS_S=$(since "$PH")

# ---------------------------------------------------------------------------- through the balancer
PH=$(now)
echo
echo "== balancer: $ROUNDS rounds of HTTPS PUT + GET and SFTP put + get through HAProxy"
ok=0
for ((r = 1; r <= ROUNDS; r++)); do
    f=$T/src/lb-$r.bin
    mkfile "$f" $(((r % 4 + 1) * MIB + r))
    read -r code rc <<<"$(https_put "$LB_HTTPS" "$f" "lb-h$r.bin" "$T/resp.lb-h$r")"
    s=$(https_get "$LB_HTTPS" "lb-h$r.bin" "$T/dl/lb-h$r.bin")
    [[ $code == 201 && $s == 200 && $(sha "$T/dl/lb-h$r.bin") == "$(sha "$f")" ]] && ok=$((ok + 1))
    rc=0; sftp_put "$LB_SFTP" "$f" "lb-s$r.bin" || rc=$?
    rc2=0; sftp_get "$LB_SFTP" "lb-s$r.bin" "$T/dl/lb-s$r.bin" || rc2=$?
    [[ $rc == 0 && $rc2 == 0 && $(sha "$T/dl/lb-s$r.bin" 2>/dev/null) == "$(sha "$f")" ]] && ok=$((ok + 1))
done
expect "balancer round trips" "$ok of $((2 * ROUNDS)) (HTTPS and SFTP) with equal SHA-256" test "$ok" = $((2 * ROUNDS))
sa=$(server_sessions gateways_https A); sb=$(server_sessions gateways_https B)
fa=$(server_sessions gateways_sftp A); fb=$(server_sessions gateways_sftp B)
expect "balancer spread" "HAProxy sessions so far: https A $sa / B $sb, sftp A $fa / B $fb" \
    test "$sa" -gt 0 -a "$sb" -gt 0 -a "$fa" -gt 0 -a "$fb" -gt 0
LB_S=$(since "$PH")

# ---------------------------------------------------------------------------- drills
# upload_one DRILL I: one upload through HAProxy, or to A and B in turn when UPLOAD_VIA=direct (every 4th over SFTP), result in $T/res/DRILL/NAME:
#   "proto name bytes sha256 http_code client_rc seconds"
UPLOAD_VIA=lb   # or direct
upload_one() {
    local drill=$1 i=$2 name proto f code rc t0 hport sport
    name=$(printf '%s-%03d.bin' "$drill" "$i")
    f=$T/src/$name
    proto=https; ((i % 4 == 3)) && proto=sftp
    hport=$LB_HTTPS sport=$LB_SFTP
    if [[ $UPLOAD_VIA == direct ]]; then   # straight to a node, A and B in turn
        hport=$A_HTTPS sport=$A_SFTP
        ((i % 2)) && hport=$B_HTTPS sport=$B_SFTP
    fi
    t0=$(now)
    if [[ $proto == https ]]; then
        read -r code rc <<<"$(https_put "$hport" "$f" "$name" "$T/res/$drill/$name.resp")"
    else
        code=-; rc=0
        sftp_put "$sport" "$f" "$name" || rc=$?
        cp "$T/sftp.$name.err" "$T/res/$drill/$name.resp.err" 2>/dev/null || true
    fi
    echo "$proto $name $(stat -c %s "$f") $(sha "$f") $code $rc $(since "$t0")" >"$T/res/$drill/$name.tmp"
    mv "$T/res/$drill/$name.tmp" "$T/res/$drill/$name"
}
finished() { find "$T/res/$1" -maxdepth 1 -name "$1-*.bin" | wc -l; }   # finished DRILL: results so far
UPLOAD_PIDS=()
running() { local p n=0; for p in "${UPLOAD_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo "$n"; }
run_drill() { # run_drill DRILL COUNT ACTION: COUNT uploads, PARALLEL at once; ACTION runs once COUNT/4 are done
    local drill=$1 count=$2 action=$3 i p acted=0
    mkdir -p "$T/res/$drill"
    for ((i = 0; i < count; i++)); do
        mkfile "$T/src/$(printf '%s-%03d.bin' "$drill" "$i")" $(((4 + (i * 7) % 13) * MIB + i))
    done
    UPLOAD_PIDS=()
    for ((i = 0; i < count; i++)); do
        while true; do
            if ((!acted && $(finished "$drill") >= count / 4)); then "$action"; acted=1; fi
            (($(running) < PARALLEL)) && break
            sleep 0.05
        done
        upload_one "$drill" "$i" &
        UPLOAD_PIDS+=($!)
    done
    while (($(running) > 0)); do
        if ((!acted && $(finished "$drill") >= count / 4)); then "$action"; acted=1; fi
        sleep 0.05
    done
    for p in "${UPLOAD_PIDS[@]}"; do wait "$p" || true; done
    UPLOAD_PIDS=()
    ((acted)) || "$action"
}

# The audit analysis: for each result of a drill, what the two trails say about its path.
cat >"$T/audit.py" <<'PYEOF'
# audit.py results_dir trail_A trail_B: one line per upload,
#   "name verdict node detail" where verdict is ok (acknowledged, completed record on node),
#   failed-clean, or BAD (and detail says why).
import json, os, sys

res_dir, trails = sys.argv[1], {"A": sys.argv[2], "B": sys.argv[3]}
records = []   # (node, record)
for node, path in trails.items():
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append((node, json.loads(line)))

def by_path(name):
    return [(n, r) for n, r in records if (r.get("path") or "").lstrip("/") == name and r.get("operation") == "upload"]

for entry in sorted(os.listdir(res_dir)):
    if entry.endswith((".resp", ".err", ".tmp")):
        continue
    proto, name, size, sha, code, rc, secs = open(os.path.join(res_dir, entry)).read().split()
    recs = by_path(name)
    completed = [(n, r) for n, r in recs if r["event"] == "completed"]
    failed = [(n, r) for n, r in recs if r["event"] == "failed"]
    started = [(n, r) for n, r in recs if r["event"] == "started"]
    acked = (proto == "https" and code == "201" and rc == "0") or (proto == "sftp" and rc == "0")
    if acked:
        receipt_id = None
        if proto == "https":
            try:
                receipt = json.load(open(os.path.join(res_dir, name + ".resp")))
                receipt_id = receipt.get("transfer_id")
                if receipt.get("sha256") != sha:
                    print(name, "BAD", "-", "receipt sha256 %s != source %s" % (receipt.get("sha256"), sha))
                    continue
            except (OSError, ValueError) as e:
                print(name, "BAD", "-", "201 without a JSON receipt: %s" % e)
                continue
        good = [(n, r) for n, r in completed if r.get("sha256") == sha and str(r.get("bytes")) == size
                and (receipt_id is None or r.get("transfer_id") == receipt_id)]
        if len(good) != 1:
            print(name, "BAD", "-", "acknowledged (%s %s) but %d matching completed records (%d completed, %d failed)"
                  % (proto, code if proto == "https" else "exit " + rc, len(good), len(completed), len(failed)))
            continue
        node, rec = good[0]
        late = [r for n, r in failed if r.get("transfer_id") == rec.get("transfer_id")]
        if late:
            print(name, "BAD", node, "acknowledged, but its transfer also has a failed record")
            continue
        print(name, "ok", node, "%s %.1fs" % (proto, float(secs)))
    else:
        if proto == "https":
            clean = rc == "0" and code[:1] in ("4", "5")
            how = "HTTP %s" % code if clean else "curl exit %s, HTTP %s" % (rc, code)
            if clean:
                try:
                    err = json.load(open(os.path.join(res_dir, name + ".resp")))
                    how += " %s" % err.get("error")
                except (OSError, ValueError):
                    clean, how = False, how + " without a JSON error body"
        else:
            text = open(os.path.join(res_dir, name + ".resp.err")).read() if os.path.exists(os.path.join(res_dir, name + ".resp.err")) else ""
            unclean = ("Connection closed", "Connection reset", "Broken pipe", "timed out", "Timeout", "kex_exchange")
            clean = rc not in ("124", "255") and not any(u in text for u in unclean)
            how = "sftp exit %s: %s" % (rc, " / ".join(l.strip() for l in text.splitlines() if l.strip())[:160])
        if completed:
            print(name, "BAD", completed[0][0], "not acknowledged (%s) but a completed record exists" % how)
        elif not failed:
            print(name, "BAD", "-", "failed (%s) without a failed record (%d started)" % (how, len(started)))
        elif not clean:
            print(name, "BAD", failed[0][0], "failed record present, but the client saw no clean error: %s" % how)
        else:
            print(name, "failed-clean", failed[0][0], "%s; audit error: %s" % (how, (failed[0][1].get("error") or "")[:160]))
PYEOF

s3_errors() { # s3_errors A|B: failed S3 request attempts so far (404s aside: the gateway asks whether a name is free), by operation and error, from the node's /metrics
    curl -s --max-time 5 "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" |
        awk '/^gateway_storage_request_errors_total/ && !/error="404"/ { n += $NF; split($0, a, "[{}]"); d = d sep a[2] "=" $NF; sep = "; " } END { printf "%d%s", n, (n ? " (" d ")" : "") }' |
        sed 's/backend="s3",//g; s/operation=//g; s/error=//g; s/"//g'
}
TRAIL_A=$T/gw-A-data/audit/audit.jsonl
TRAIL_B=$T/gw-B-data/audit/audit.jsonl
# check_drill DRILL LABEL: audit analysis, then every acknowledged upload downloaded through the
# node that did not take it.
check_drill() {
    local drill=$1 label=$2 name verdict node detail other s acked=0 failed=0 bad=0 dl_ok=0 dl_bad=0 total ta tb
    [[ -s $TRAIL_A && -s $TRAIL_B ]] || die "an audit trail is missing ($TRAIL_A, $TRAIL_B)"
    python3 "$T/audit.py" "$T/res/$drill" "$TRAIL_A" "$TRAIL_B" >"$T/$drill.verdicts" || die "audit.py failed on $drill"
    total=$(wc -l <"$T/$drill.verdicts")
    ta=0; tb=0
    while read -r name verdict node detail; do
        case $verdict in
            ok)
                acked=$((acked + 1))
                [[ $node == A ]] && ta=$((ta + 1)); [[ $node == B ]] && tb=$((tb + 1))
                other=B; [[ $node == B ]] && other=A
                [[ -n ${GW_PID[$other]} ]] || other=$node   # the other node is stopped: read it where it is
                s=$(https_get "${HTTPS_PORT[$other]}" "$name" "$T/dl/$name")
                if [[ $s == 200 && $(sha "$T/dl/$name") == "$(sha "$T/src/$name")" ]]; then dl_ok=$((dl_ok + 1))
                else dl_bad=$((dl_bad + 1)); echo "   download of $name on $other: HTTP $s, SHA-256 $(sha "$T/dl/$name" 2>/dev/null)"; fi
                rm -f "$T/dl/$name"
                ;;
            failed-clean) failed=$((failed + 1)); echo "   clean failure: $name on $node: $detail" ;;
            *) bad=$((bad + 1)); echo "   BAD: $name ($node): $detail" ;;
        esac
    done <"$T/$drill.verdicts"
    D_ACKED=$acked D_FAILED=$failed
    expect "$label: all accounted" "$total uploads: $acked acknowledged (taken by A $ta, B $tb), $failed failed cleanly, $bad otherwise" \
        test "$bad" = 0 -a "$total" -gt 0 -a $((acked + failed)) = "$total"
    expect "$label: acknowledged = stored" "$dl_ok of $acked acknowledged uploads downloaded through the other node with their SHA-256" \
        test "$dl_bad" = 0 -a "$dl_ok" = "$acked"
}

PH=$(now)
echo
echo "== storage drill: $UPLOADS uploads of 4-16 MiB through HAProxy, $PARALLEL at once; SIGKILL to Garage node 2 after $((UPLOADS / 4))"
KILLED_AT=""
kill_garage() {   # kill first, report after: the uploads in flight are the point
    local running_now
    running_now=$(running)
    D1_INFLIGHT=$running_now
    kill -KILL "${GA_PIDS[2]}" 2>/dev/null || true
    KILLED_AT=$(since "$PH")
    wait "${GA_PIDS[2]}" 2>/dev/null || true
    GA_PIDS[2]=""
    echo "   Garage node 2 killed at ${KILLED_AT} s ($(finished d1) uploads finished, $running_now in flight); it had served $(server_sessions garage g2) of the gateways' S3 connections, and every upload replicates its blocks to it"
}
run_drill d1 "$UPLOADS" kill_garage
D1_S=$(since "$PH")
wait_state garage g2 DOWN 5 && g2=DOWN || g2=$(server_state garage g2)
echo "   stream done in ${D1_S} s; HAProxy sees Garage node 2 $g2; gateways ready: A $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$A_ADMIN/readyz"), B $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$B_ADMIN/readyz")"
expect "storage drill: kill mid-stream" "$D1_INFLIGHT uploads in flight when Garage node 2 was killed" test "${D1_INFLIGHT:-0}" -gt 0
check_drill d1 "storage drill"
D1_ACKED=$D_ACKED D1_FAILED=$D_FAILED
D1_S3_ERR="A $(s3_errors A), B $(s3_errors B)"
echo "   S3 request attempts that failed (retried, or failing the transfer; 404s aside), from /metrics: $D1_S3_ERR"
D1_CHECK_S=$(since "$PH")

PH=$(now)
echo
echo "== gateway drill: $GW_UPLOADS uploads through HAProxy, $PARALLEL at once; SIGTERM to gateway B after $((GW_UPLOADS / 4))"
STOPPED_AT=""
stop_b() {
    local running_now
    running_now=$(running)
    D2_INFLIGHT=$running_now
    gw_stop B &   # drains in the background: the stream goes on meanwhile
    GW_STOPPER=$!
    STOPPED_AT=$(since "$PH")
    echo "   SIGTERM to gateway B at ${STOPPED_AT} s ($(finished d2) uploads finished, $running_now in flight)"
}
run_drill d2 "$GW_UPLOADS" stop_b
wait "$GW_STOPPER" 2>/dev/null || true
GW_PID[B]=""
D2_S=$(since "$PH")
echo "   stream done in ${D2_S} s; HAProxy sees B: https $(server_state gateways_https B), sftp $(server_state gateways_sftp B)"
expect "gateway drill: stop mid-stream" "$D2_INFLIGHT uploads in flight when gateway B got SIGTERM" test "${D2_INFLIGHT:-0}" -gt 0
check_drill d2 "gateway drill"
D2_ACKED=$D_ACKED D2_FAILED=$D_FAILED
# B comes back on the same ports; HAProxy must send it traffic again.
gw_start B
{ wait_state gateways_https B UP 15 && wait_state gateways_sftp B UP 15; } || true
before=$(server_sessions gateways_https B)
for r in 1 2 3 4; do https_get "$LB_HTTPS" x-multi.bin /dev/null >/dev/null; done
after=$(server_sessions gateways_https B)
expect "gateway B rejoins" "restarted on the same ports: HAProxy state $(server_state gateways_https B), $((after - before)) of 4 new HTTPS connections to B" \
    test $((after - before)) -ge 1
D2_CHECK_S=$(since "$PH")

PH=$(now)
echo
echo "== quorum drill: $Q_UPLOADS uploads straight to A and B in turn, $PARALLEL at once; SIGKILL to Garage node 1 after $((Q_UPLOADS / 4))"
echo "   (node 2 is still down: one node of three left, no write quorum; then both are started again)"
garage_start() { # garage_start I: (re)start node I on its configuration and data
    RUST_LOG=garage=warn "$GARAGE" -c "$T/garage$1/garage.toml" server >>"$T/garage$1/garage.log" 2>&1 </dev/null &
    GA_PIDS[$1]=$!
}
kill_garage1() {
    local running_now
    running_now=$(running)
    D3_INFLIGHT=$running_now
    kill -KILL "${GA_PIDS[1]}" 2>/dev/null || true
    KILLED1_AT=$(since "$PH")
    wait "${GA_PIDS[1]}" 2>/dev/null || true
    GA_PIDS[1]=""
    echo "   Garage node 1 killed at ${KILLED1_AT} s ($(finished d3) uploads finished, $running_now in flight)"
}
UPLOAD_VIA=direct
run_drill d3 "$Q_UPLOADS" kill_garage1
UPLOAD_VIA=lb
D3_S=$(since "$PH")
echo "   stream done in ${D3_S} s; during the outage HAProxy sees gateways A $(server_state gateways_https A), B $(server_state gateways_https B) (/readyz includes the storage)"
D3_S3_ERR="A $(s3_errors A), B $(s3_errors B)"
echo "   S3 request attempts that failed so far, from /metrics: $D3_S3_ERR"
garage_start 1
garage_start 2
for i in 1 2; do   # node 0 would find them again by itself, within a minute; tell it at once
    for ((t = 0; t < STARTUP_TIMEOUT * 10; t++)); do garage_cli "$i" status >/dev/null 2>&1 && break; sleep 0.1; done
    garage_cli 0 node connect "${IDS[i]}" >/dev/null 2>&1 || true
done
for ((t = 0; t < STARTUP_TIMEOUT * 5; t++)); do healthy && break; sleep 0.2; done
expect "garage heals" "nodes 1 and 2 restarted on their data: cluster healthy after $(since "$PH") s into the drill" healthy
expect "quorum drill: kill mid-stream" "$D3_INFLIGHT uploads in flight when Garage node 1 was killed" test "${D3_INFLIGHT:-0}" -gt 0
check_drill d3 "quorum drill"
D3_ACKED=$D_ACKED D3_FAILED=$D_FAILED
# A failed upload aborts its multipart upload, but without a quorum the abort fails too: what is
# left waits for the next start's orphan sweep (orphan_upload_age). Counted, not judged.
D3_ORPHANS=$(python3 - "http://127.0.0.1:$LB_S3" "$BUCKET" "$PREFIX" "$M/s3/access_key_id" "$M/s3/secret_access_key" <<'EOF' 2>&1 | tail -n 1
import sys, boto3, botocore.config
endpoint, bucket, prefix, id_file, secret_file = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="garage",
                  aws_access_key_id=open(id_file).read().strip(), aws_secret_access_key=open(secret_file).read().strip(),
                  config=botocore.config.Config(s3={"addressing_style": "path"}))
print(len(s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])))
EOF
)
echo "   multipart uploads left open in the bucket (their abort failed during the outage): $D3_ORPHANS"
expect "quorum drill: writes refused" "$D3_FAILED of $Q_UPLOADS uploads failed while only one Garage node was up" test "$D3_FAILED" -gt 0
{ wait_state gateways_https A UP 15 && wait_state gateways_https B UP 15; } || true
read -r code rc <<<"$(https_put "$LB_HTTPS" "$T/src/x-multi.bin" after-heal.bin "$T/resp.after-heal")"
expect "service resumes" "HAProxy sees A $(server_state gateways_https A), B $(server_state gateways_https B); an upload through it: HTTP $code" test "$code" = 201
D3_CHECK_S=$(since "$PH")

# ---------------------------------------------------------------------------- audit trails
PH=$(now)
echo
echo "== audit trails (after a clean stop of both gateways)"
gw_stop A
gw_stop B
for n in A B; do
    trail=$T/gw-$n-data/audit/audit.jsonl
    out=$("$BIN" audit verify --public-key "$M/audit/checkpoint.pub" "$trail" 2>&1) && rc=0 || rc=$?
    expect "audit verify $n" "exit $rc: $(tail -n 1 <<<"$out" | cut -c1-150)" test "$rc" = 0
    records=$(wc -l <"$trail")
    out=$("$BIN" audit verify-shipped --config "$T/gw-$n.toml" --node "gw-$n" --public-key "$M/audit/checkpoint.pub" 2>&1) && rc=0 || rc=$?
    expect "shipped trail $n" "exit $rc: $(head -n 1 <<<"$out" | cut -c1-160) (local trail: $records records)" \
        grep -q "node gw-$n: OK: .* $records records" <<<"$out"
    pairs=$(python3 - "$trail" "$T/pairs-$n.txt" <<'EOF'
import collections, json, sys
opened, outcomes, events = {}, collections.Counter(), collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    t, e = r.get("transfer_id"), r.get("event")
    if not t:
        continue
    events[t].append("%s:%s %s" % (r.get("seq"), e, (r.get("error") or "")[:90]))
    if e in ("started", "intent"):
        opened.setdefault(t, (r.get("protocol"), r.get("operation"), r.get("path")))
    elif e in ("completed", "failed", "interrupted") or (e == "operation" and t in opened):
        outcomes[t] += 1
bad = [t for t in opened if outcomes[t] != 1]
with open(sys.argv[2], "w") as out:   # what the summary shows for each bad transfer
    for t in bad:
        out.write("transfer %s %s: %s\n" % (t, opened[t], " | ".join(events[t])))
print(len(opened), len(bad), sum(1 for t in outcomes if t not in opened))
EOF
)
    [[ -s $T/pairs-$n.txt ]] && sed 's/^/   /' "$T/pairs-$n.txt"
    read -r n_open n_bad n_orphan <<<"$pairs"
    expect "audit pairs $n" "$n_open started/intent records, $n_bad without exactly one outcome, $n_orphan outcomes without a start" \
        test "$n_bad" = 0 -a "$n_orphan" = 0 -a "$n_open" -gt 0
done
AUDIT_S=$(since "$PH")

# ---------------------------------------------------------------------------- summary
echo
echo "== summary"
printf '| %-4s | %-36s | %s\n' result check detail
for r in "${RESULTS[@]}"; do
    IFS=$'\t' read -r v n d <<<"$r"
    printf '| %-4s | %-36s | %s\n' "$v" "$n" "$d"
done
echo
echo "storage drill: $UPLOADS uploads through HAProxy ($(((UPLOADS + 1) / 4)) of them SFTP), Garage node 2 killed at ${KILLED_AT} s: $D1_ACKED acknowledged, $D1_FAILED failed cleanly; stream ${D1_S} s"
echo "gateway drill: $GW_UPLOADS uploads, gateway B stopped at ${STOPPED_AT} s: $D2_ACKED acknowledged, $D2_FAILED failed cleanly; stream ${D2_S} s"
echo "quorum drill: $Q_UPLOADS uploads direct to A/B, Garage node 1 killed too at ${KILLED1_AT} s: $D3_ACKED acknowledged, $D3_FAILED failed cleanly, $D3_ORPHANS multipart uploads left open; stream ${D3_S} s"
echo "failed S3 request attempts (/metrics): after the storage drill $D1_S3_ERR; after the quorum drill (B restarted in between) $D3_S3_ERR"
echo "elapsed: setup ${SETUP_S} s, cross-node ${CROSS_S} s, balancer ${LB_S} s, storage drill ${D1_CHECK_S} s, gateway drill ${D2_CHECK_S} s, quorum drill ${D3_CHECK_S} s, audit ${AUDIT_S} s; total $(since "$START") s"
if ((FAILS)); then
    echo "RESULT: FAIL ($FAILS of ${#RESULTS[@]} checks failed)"
    exit 1
fi
echo "RESULT: PASS (${#RESULTS[@]} checks)"
