#!/usr/bin/env bash
# The container's runtime stage, without a container runtime (images cannot be pulled here):
# assemble exactly what the Dockerfile's last stage holds, in a directory, and run the gateway
# there under chroot as uid 65532, the way the image runs it, until /readyz answers.
#
# What the stage holds: /usr/local/bin/gateway (the Dockerfile's one COPY), and from
# distroless/cc-debian12:nonroot the C runtime the binary links (found with ldd), /etc/passwd
# and /etc/group naming nonroot (65532), the CA bundle and /tmp. The volumes: /etc/gateway
# (configuration and key material, read-only to the process) and /var/lib/gateway (its data;
# the only place owned by 65532). Everything else is root's: the process can write nowhere
# else, as with `docker run --read-only`.
#
# Usage: bash tests/container/chroot.sh [GATEWAY_BINARY]   (default target/debug/gateway)
# Needs root (chroot, chown). Only 127.0.0.1 is used; the listeners bind port 0.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT_DIR/target/debug/gateway}
UID_NONROOT=65532
die() { echo "chroot test: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (chroot)"
[[ -x $BIN ]] || die "$BIN is not built (cargo build -p gateway)"
grep -q 'COPY --from=build /out/usr/local/bin/gateway /usr/local/bin/gateway' "$ROOT_DIR/Dockerfile" ||
    die "the Dockerfile's runtime stage no longer copies what this test assembles; update both"

R=$(mktemp -d /tmp/gateway-chroot.XXXXXX)
chmod 0755 "$R"   # the root directory of the image: root-owned, readable by all
PID=""
cleanup() {
    local rc=$?
    [[ -n $PID ]] && kill -9 "$PID" 2>/dev/null || true
    if ((rc != 0)); then
        for f in "$R/out" "$R/err"; do [[ -s $f ]] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done
    fi
    rm -rf "$R"
}
trap cleanup EXIT

# --- the runtime stage's files
install -D -m 0755 "$BIN" "$R/usr/local/bin/gateway"
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$lib" "$R$lib"
done
mkdir -p "$R/etc/ssl/certs" "$R/tmp"
chmod 1777 "$R/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
echo "root:x:0:0:root:/root:/sbin/nologin" >"$R/etc/passwd"
echo "nonroot:x:$UID_NONROOT:$UID_NONROOT:nonroot:/home/nonroot:/sbin/nologin" >>"$R/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_NONROOT" >"$R/etc/group"

# --- the volumes: production material made with the real tools
E="$R/etc/gateway"
mkdir -p "$E/tls" "$E/keys" "$E/audit" "$R/var/lib/gateway"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$E/tls/server.key" -out "$E/tls/server.pem" 2>/dev/null
"$BIN" keys tenant "$E/keys/acme.key" >/dev/null
"$BIN" keys audit "$E/audit/checkpoint.key" >/dev/null
head -c 24 /dev/urandom | base64 >"$E/admin.token"
cat >"$E/gateway.toml" <<TOML
mode = "production"
data_dir = "/var/lib/gateway"
shutdown_grace = "2s"
[https]
listen = "127.0.0.1:0"
cert = "/etc/gateway/tls/server.pem"
key = "/etc/gateway/tls/server.key"
[admin]
listen = "127.0.0.1:0"
token_file = "/etc/gateway/admin.token"
[storage]
keys_dir = "/etc/gateway/keys"
[audit]
signing_key = "/etc/gateway/audit/checkpoint.key"
[[tenants]]
name = "acme"
TOML
chmod 0600 "$E/tls/server.key" "$E/keys/acme.key" "$E/audit/checkpoint.key" "$E/admin.token"
chown -R "$UID_NONROOT:$UID_NONROOT" "$E" "$R/var/lib/gateway"
chmod -R a-w "$E"   # read-only to the process, as a :ro mount

# --- run it as the image does
chroot --userspec="$UID_NONROOT:$UID_NONROOT" "$R" /usr/local/bin/gateway check-config --config /etc/gateway/gateway.toml
chroot --userspec="$UID_NONROOT:$UID_NONROOT" "$R" /usr/local/bin/gateway serve --config /etc/gateway/gateway.toml \
    >"$R/out" 2>"$R/err" &
PID=$!
admin=""
for _ in $(seq 1 300); do
    admin=$(sed -n 's|^admin listening on http://\([^/]*\)/metrics.*|\1|p' "$R/out")
    [[ -n $admin ]] && break
    kill -0 "$PID" 2>/dev/null || die "the gateway exited at start"
    sleep 0.1
done
[[ -n $admin ]] || die "no admin address printed"
ready=""
for _ in $(seq 1 300); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz") == 200 ]]; then ready=1; break; fi
    sleep 0.1
done
[[ -n $ready ]] || die "/readyz never answered 200: $(curl -s "http://$admin/readyz")"
# The image's HEALTHCHECK command, run inside the root it would run in.
chroot --userspec="$UID_NONROOT:$UID_NONROOT" "$R" /usr/local/bin/gateway healthcheck --url "http://$admin/healthz" ||
    die "the HEALTHCHECK command failed"
if chroot --userspec="$UID_NONROOT:$UID_NONROOT" "$R" /usr/local/bin/gateway healthcheck --url "http://$admin/nothing" 2>/dev/null; then
    die "the HEALTHCHECK command passed on a 404"
fi
https=$(sed -n 's|^gateway listening on https://localhost:\([0-9]*\)/.*|\1|p' "$R/out")
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$E/tls/server.pem" "https://localhost:$https/v1/files/")
[[ $code == 401 ]] || die "HTTPS without a token answered $code, expected 401"
# Nothing outside the data volume was written.
written=$(find "$R" -newer "$E/gateway.toml" -type f ! -path "$R/var/lib/gateway/*" ! -path "$R/out" ! -path "$R/err" | head -5)
[[ -z $written ]] || die "wrote outside /var/lib/gateway: $written"
kill -TERM "$PID"
wait "$PID" || die "the gateway did not stop cleanly on SIGTERM"
PID=""
[[ -s $R/var/lib/gateway/audit/audit.jsonl ]] || die "no audit trail in the data volume"
echo "chroot test: OK (runtime stage as uid $UID_NONROOT: /readyz 200, HEALTHCHECK passes, HTTPS answers, writes only to /var/lib/gateway, clean stop)"
