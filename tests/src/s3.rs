//! Real S3 for the tests: one [Garage](https://garagehq.deuxfleurs.fr/) node per test binary,
//! started on first use on free loopback ports in a temporary directory, with one access key;
//! a fresh [`Bucket`] per test gateway; and helpers to look into a bucket directly (list,
//! multipart uploads, head, get, put, delete) through boto3.
//!
//! The node dies with the test binary: it runs under a small `sh` watchdog that stops it
//! (and removes its directory) once the test process is gone. When `garage` is not installed
//! the harness panics with the install command; S3 tests never skip silently.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Garage release the tests are written against (and `.ci/run` installs).
pub const GARAGE_VERSION: &str = "2.5.0";

/// How to install it.
pub const GARAGE_INSTALL: &str = "cargo install garage --version 2.5.0 --locked --no-default-features \
                                  --features bundled-libs,sqlite,lmdb";

/// S3 region the node serves.
pub const REGION: &str = "garage";

/// A running single-node Garage cluster with one access key allowed to create buckets.
#[derive(Debug)]
pub struct Garage {
    /// `http://127.0.0.1:<port>` of the S3 API.
    pub endpoint: String,
    /// Address of the S3 API (for a [`crate::fault_proxy::FaultProxy`] in front of it).
    pub s3_addr: SocketAddr,
    /// Address of the admin API.
    pub admin_addr: SocketAddr,
    /// Bearer token of the admin API.
    pub admin_token: String,
    /// Always [`REGION`].
    pub region: &'static str,
    /// The access key's id (`GK…`).
    pub access_key_id: String,
    /// The access key's secret.
    pub secret_access_key: String,
    /// The node's configuration file.
    pub config: PathBuf,
    /// The node's directory (configuration, metadata, data, `garage.log`).
    pub dir: PathBuf,
    /// Time from spawning the node to the key being usable.
    pub startup: Duration,
    bin: PathBuf,
}

static GARAGE: OnceLock<Result<Garage, String>> = OnceLock::new();
static BUCKETS: AtomicU64 = AtomicU64::new(0);

/// `sh` watchdog: runs the command given after the directory and the test process id, writes
/// its pid to `garage.pid`, and stops it once the test process is gone (then removes the
/// directory; a node that died on its own keeps its log there while the tests run).
const WATCHDOG: &str = r#"
dir=$1; parent=$2; shift 2
"$@" >>"$dir/garage.log" 2>&1 </dev/null &
g=$!
echo "$g" >"$dir/garage.pid"
while kill -0 "$parent" 2>/dev/null; do
  state=$(sed 's/.*) //' "/proc/$g/stat" 2>/dev/null | cut -c1)
  if [ -z "$state" ] || [ "$state" = Z ]; then break; fi
  sleep 0.5
done
kill -TERM "$g" 2>/dev/null
( sleep 10; kill -KILL "$g" 2>/dev/null ) &
k=$!
wait "$g" 2>/dev/null
kill "$k" 2>/dev/null
kill -0 "$parent" 2>/dev/null || rm -rf "$dir"
"#;

impl Garage {
    /// The node of this test binary, started on first call (blocking, a few seconds).
    /// Panics when Garage is missing or does not start.
    pub fn get() -> &'static Garage {
        match GARAGE.get_or_init(Garage::start) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Garage::get`] off the async runtime's threads.
    pub async fn get_async() -> &'static Garage {
        tokio::task::spawn_blocking(Garage::get).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn start() -> Result<Garage, String> {
        let bin = std::env::var_os("GARAGE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("garage"));
        let version = match Command::new(&bin).arg("--version").stdin(Stdio::null()).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            Err(e) => {
                let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
                return Err(if ci {
                    format!(
                        "{}: {e}. CI=true: the S3 tests must run in CI, not skip; .ci/run installs Garage \
                         ({GARAGE_INSTALL})",
                        bin.display()
                    )
                } else {
                    format!(
                        "{}: {e}. The S3 tests need Garage {GARAGE_VERSION} on PATH (or GARAGE_BIN): install garage: \
                         {GARAGE_INSTALL}",
                        bin.display()
                    )
                });
            }
        };
        if !version.contains(GARAGE_VERSION) {
            eprintln!("warning: {} reports {version:?}, the tests expect Garage {GARAGE_VERSION}", bin.display());
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Garage::start_once(&bin) {
                Ok(g) => return Ok(g),
                Err(e) => last = e,
            }
        }
        Err(format!("Garage did not start (3 attempts); last failure:\n{last}"))
    }

    fn start_once(bin: &Path) -> Result<Garage, String> {
        let began = Instant::now();
        let dir = tempfile::Builder::new().prefix("gateway-garage-").tempdir().map_err(|e| e.to_string())?.keep();
        let [s3_port, rpc_port, admin_port] = free_ports();
        let rpc_secret = hex::encode(crate::random_bytes(32));
        let admin_token = hex::encode(crate::random_bytes(24));
        let config = dir.join("garage.toml");
        let text = format!(
            "metadata_dir = {meta:?}\ndata_dir = {data:?}\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             compression_level = \"none\"\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{rpc_secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\nadmin_token = \"{admin_token}\"\n",
            meta = dir.join("meta"),
            data = dir.join("data"),
        );
        write_private(&config, text.as_bytes()).map_err(|e| format!("{}: {e}", config.display()))?;
        Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("garage-watchdog")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .arg(bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", std::env::var("GARAGE_LOG").unwrap_or_else(|_| "garage=warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("sh: {e}"))?;
        let mut g = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            s3_addr: SocketAddr::from(([127, 0, 0, 1], s3_port)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            admin_token,
            region: REGION,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            config,
            dir,
            startup: Duration::ZERO,
            bin: bin.to_owned(),
        };
        match g.setup(began) {
            Ok(()) => Ok(g),
            Err(e) => {
                let log = std::fs::read_to_string(g.dir.join("garage.log")).unwrap_or_default();
                if let Some(pid) = g.pid() {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
                Err(format!("{e}\n--- garage.log ({}) ---\n{log}", g.dir.display()))
            }
        }
    }

    /// Wait for the node, give it a layout, make the key.
    fn setup(&mut self, began: Instant) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.run(&["status"]).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err("`garage status` did not succeed within 60 s".into());
            }
            if let Some(pid) = self.pid() {
                if !process_alive(pid) {
                    return Err("the garage server exited".into());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = self.run(&["node", "id", "-q"])?;
        let id = id.trim().split('@').next().unwrap_or_default().to_owned();
        self.run(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        self.run(&["layout", "apply", "--version", "1"])?;
        let key = self.run(&["json-api", "CreateKey", r#"{"name":"gateway-test"}"#])?;
        let key: serde_json::Value = serde_json::from_str(&key).map_err(|e| format!("CreateKey output: {e}: {key}"))?;
        let field = |name: &str| {
            key.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or(format!("CreateKey output lacks {name}: {key}"))
        };
        self.access_key_id = field("accessKeyId")?;
        self.secret_access_key = field("secretAccessKey")?;
        self.run(&["key", "allow", "--create-bucket", &self.access_key_id])?;
        self.startup = began.elapsed();
        Ok(())
    }

    /// Run `garage -c <config> args…`; its stdout, or an error with its output.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("garage {args:?}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("garage {args:?} failed ({}):\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Process id of the `garage server` process.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("garage.pid")).ok()?.trim().parse().ok()
    }

    /// A new, empty bucket the access key may read, write and own.
    pub fn create_bucket(&'static self) -> Bucket {
        let n = BUCKETS.fetch_add(1, Ordering::SeqCst);
        let name = format!("gw-test-{}-{n}", std::process::id());
        let attempt = || -> Result<(), String> {
            self.run(&["bucket", "create", &name])?;
            self.run(&["bucket", "allow", "--read", "--write", "--owner", &name, "--key", &self.access_key_id])?;
            Ok(())
        };
        if let Err(e) = attempt() {
            panic!("creating bucket {name}: {e}");
        }
        Bucket { name, endpoint: self.endpoint.clone(), garage: self }
    }
}

fn free_ports() -> [u16; 3] {
    // All three bound at once, so they differ; released just before Garage binds them.
    let ls: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    let port = |i: usize| ls.get(i).and_then(|l| l.local_addr().ok()).map(|a| a.port()).unwrap_or_default();
    [port(0), port(1), port(2)]
}

fn process_alive(pid: u32) -> bool {
    // Field 3 of /proc/<pid>/stat is the state; a zombie has exited.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Write a file readable by its owner only (`0600`).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)
}

/// An object as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct S3Object {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// An incomplete multipart upload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
}

/// What `HeadObject` (or `GetObject`) says about an object.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct S3Head {
    pub size: u64,
    pub etag: String,
    /// User metadata (`x-amz-meta-*`), names lower-case without the prefix.
    pub metadata: BTreeMap<String, String>,
    /// `x-amz-server-side-encryption` (`AES256`, `aws:kms`), if any.
    pub server_side_encryption: Option<String>,
    /// `x-amz-server-side-encryption-customer-algorithm` (`AES256` for SSE-C), if any.
    pub sse_customer_algorithm: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id`, if any.
    pub kms_key_id: Option<String>,
    pub content_type: Option<String>,
}

/// An S3 error response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct S3Error {
    /// HTTP status.
    pub status: u16,
    /// S3 error code (`NoSuchKey`, `InvalidRequest`, …; for a HEAD, the status as text).
    pub code: String,
    pub message: String,
}

impl S3Error {
    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }
}

/// boto3 client on the endpoint and key from the environment; one operation per run, its
/// result as JSON on stdout (`{"error": …}` for an S3 error response).
const BOTO: &str = r#"
import json, os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
op, a = sys.argv[1], json.loads(sys.argv[2])
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["TEST_S3_ENDPOINT"],
    region_name=os.environ["TEST_S3_REGION"],
    aws_access_key_id=os.environ["TEST_S3_KEY_ID"],
    aws_secret_access_key=os.environ["TEST_S3_SECRET"],
    config=Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=5,
        read_timeout=60,
    ),
)
b = a["bucket"]
sse = {}
if a.get("sse_c_key"):
    sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": bytes.fromhex(a["sse_c_key"])}

def head(r):
    return {
        "size": r.get("ContentLength", 0),
        "etag": r.get("ETag", ""),
        "metadata": r.get("Metadata", {}),
        "server_side_encryption": r.get("ServerSideEncryption"),
        "sse_customer_algorithm": r.get("SSECustomerAlgorithm"),
        "kms_key_id": r.get("SSEKMSKeyId"),
        "content_type": r.get("ContentType"),
    }

try:
    if op == "list":
        out = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=a["prefix"]):
            for o in page.get("Contents", []):
                out.append({"key": o["Key"], "size": o["Size"], "etag": o.get("ETag", "")})
    elif op == "uploads":
        out = []
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=b, Prefix=a["prefix"]):
            for u in page.get("Uploads", []):
                out.append({"key": u["Key"], "upload_id": u["UploadId"]})
    elif op == "head":
        out = head(s3.head_object(Bucket=b, Key=a["key"], **sse))
    elif op == "get":
        r = s3.get_object(Bucket=b, Key=a["key"], **sse)
        with open(a["dest"], "wb") as f:
            for chunk in r["Body"].iter_chunks(1 << 20):
                f.write(chunk)
        out = head(r)
    elif op == "put":
        with open(a["src"], "rb") as f:
            s3.put_object(Bucket=b, Key=a["key"], Body=f.read(), Metadata=a.get("metadata", {}), **sse)
        out = None
    elif op == "create_mpu":
        out = s3.create_multipart_upload(Bucket=b, Key=a["key"], **sse)["UploadId"]
    elif op == "delete":
        s3.delete_object(Bucket=b, Key=a["key"])
        out = None
    elif op == "abort_all":
        out = 0
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=b, Prefix=a["prefix"]):
            for u in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=b, Key=u["Key"], UploadId=u["UploadId"])
                out += 1
    else:
        raise SystemExit("unknown op " + op)
except ClientError as e:
    err = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    out = {"error": {"status": status, "code": str(err.get("Code", "")), "message": str(err.get("Message", ""))}}
print(json.dumps(out))
"#;

/// One bucket on the test node.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// Bucket name.
    pub name: String,
    /// The S3 endpoint the helpers talk to (the node's, unless [`Bucket::via`]).
    pub endpoint: String,
    /// The node it lives on.
    pub garage: &'static Garage,
}

impl Bucket {
    async fn boto(&self, op: &str, mut args: serde_json::Value) -> serde_json::Value {
        args["bucket"] = self.name.clone().into();
        let args = args.to_string();
        let env = [
            ("TEST_S3_ENDPOINT", self.endpoint.as_str()),
            ("TEST_S3_REGION", self.garage.region),
            ("TEST_S3_KEY_ID", self.garage.access_key_id.as_str()),
            ("TEST_S3_SECRET", self.garage.secret_access_key.as_str()),
        ];
        let out = crate::python_env(&["-c", BOTO, op, &args], &env, Duration::from_secs(120)).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("boto3 {op} output ({e}): {out}"))
    }

    fn split<T: serde::de::DeserializeOwned>(op: &str, v: serde_json::Value) -> Result<T, S3Error> {
        if let Some(err) = v.get("error") {
            return Err(serde_json::from_value(err.clone()).unwrap_or_else(|e| panic!("boto3 {op} error ({e}): {v}")));
        }
        Ok(serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("boto3 {op} output ({e}): {v}")))
    }

    fn sse_hex(sse_c: Option<&[u8; 32]>) -> serde_json::Value {
        sse_c.map(hex::encode).map_or(serde_json::Value::Null, Into::into)
    }

    /// The same bucket, reached through another endpoint (a fault proxy in front of the node).
    pub fn via(&self, endpoint: &str) -> Bucket {
        Bucket { endpoint: endpoint.to_owned(), ..self.clone() }
    }

    /// `CreateMultipartUpload` without parts or completion (an upload left behind); its id.
    pub async fn start_multipart_upload(&self, key: &str, sse_c: Option<&[u8; 32]>) -> String {
        let v = self.boto("create_mpu", serde_json::json!({ "key": key, "sse_c_key": Self::sse_hex(sse_c) })).await;
        Self::split("create_mpu", v).unwrap_or_else(|e| panic!("starting an upload in {}: {e:?}", self.name))
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Vec<S3Object> {
        let v = self.boto("list", serde_json::json!({ "prefix": prefix })).await;
        Self::split("list", v).unwrap_or_else(|e| panic!("listing {}: {e:?}", self.name))
    }

    /// Keys of [`Bucket::list`].
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.list(prefix).await.into_iter().map(|o| o.key).collect()
    }

    /// Whether an object exists at exactly `key` (whatever its encryption).
    pub async fn exists(&self, key: &str) -> bool {
        self.list(key).await.iter().any(|o| o.key == key)
    }

    /// Incomplete multipart uploads whose key starts with `prefix`.
    pub async fn multipart_uploads(&self, prefix: &str) -> Vec<MultipartUpload> {
        let v = self.boto("uploads", serde_json::json!({ "prefix": prefix })).await;
        Self::split("uploads", v).unwrap_or_else(|e| panic!("listing uploads of {}: {e:?}", self.name))
    }

    /// Abort every incomplete multipart upload under `prefix`; how many there were.
    pub async fn abort_multipart_uploads(&self, prefix: &str) -> usize {
        let v = self.boto("abort_all", serde_json::json!({ "prefix": prefix })).await;
        Self::split("abort_all", v).unwrap_or_else(|e| panic!("aborting uploads in {}: {e:?}", self.name))
    }

    /// `HeadObject`, with the SSE-C key when the object needs one.
    pub async fn head(&self, key: &str, sse_c: Option<&[u8; 32]>) -> Result<S3Head, S3Error> {
        let v = self.boto("head", serde_json::json!({ "key": key, "sse_c_key": Self::sse_hex(sse_c) })).await;
        Self::split("head", v)
    }

    /// The whole-object SHA-256 the gateway keeps for `key`, as a client of the bucket finds
    /// it: the object's `gateway-sha256` metadata (single put), else its digest object
    /// `.gateway-sha256/<key>` (multipart) while that names the object's ETag.
    pub async fn gateway_sha256(&self, key: &str, sse_c: Option<&[u8; 32]>) -> Option<String> {
        let head = self.head(key, sse_c).await.ok()?;
        if let Some(d) = head.metadata.get("gateway-sha256") {
            return Some(d.clone());
        }
        let side = self.head(&format!(".gateway-sha256/{key}"), sse_c).await.ok()?;
        (side.metadata.get("gateway-etag") == Some(&head.etag)).then(|| side.metadata.get("gateway-sha256").cloned())?
    }

    /// `GetObject`: the whole body, with the SSE-C key when the object needs one.
    pub async fn get(&self, key: &str, sse_c: Option<&[u8; 32]>) -> Result<Vec<u8>, S3Error> {
        self.get_with_head(key, sse_c).await.map(|(_, body)| body)
    }

    /// `GetObject`: the response headers and the whole body.
    pub async fn get_with_head(&self, key: &str, sse_c: Option<&[u8; 32]>) -> Result<(S3Head, Vec<u8>), S3Error> {
        let dest = tempfile::NamedTempFile::new().expect("temporary file");
        let args = serde_json::json!({ "key": key, "sse_c_key": Self::sse_hex(sse_c), "dest": dest.path() });
        let head: S3Head = Self::split("get", self.boto("get", args).await)?;
        let body = std::fs::read(dest.path()).expect("read the downloaded object");
        Ok((head, body))
    }

    /// `PutObject` (as another tool writing into the bucket would), with optional user
    /// metadata and SSE-C key.
    pub async fn put(&self, key: &str, data: &[u8], metadata: &[(&str, &str)], sse_c: Option<&[u8; 32]>) {
        let src = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(src.path(), data).expect("write the object to upload");
        let meta: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
        let args =
            serde_json::json!({ "key": key, "src": src.path(), "metadata": meta, "sse_c_key": Self::sse_hex(sse_c) });
        let v = self.boto("put", args).await;
        if let Err(e) = Self::split::<serde_json::Value>("put", v) {
            panic!("putting {key} into {}: {e:?}", self.name);
        }
    }

    /// `DeleteObject`.
    pub async fn delete(&self, key: &str) {
        let v = self.boto("delete", serde_json::json!({ "key": key })).await;
        if let Err(e) = Self::split::<serde_json::Value>("delete", v) {
            panic!("deleting {key} from {}: {e:?}", self.name);
        }
    }
}

/// Where the tenants of an S3-backed test gateway live.
#[derive(Clone, Debug)]
pub struct S3Tenants {
    /// The gateway's own fresh bucket.
    pub bucket: Bucket,
    /// Key prefix per tenant (`"acme"` → `"acme/"` unless set otherwise).
    pub prefixes: BTreeMap<String, String>,
    /// SSE-C key per tenant that uses SSE-C.
    pub sse_c_keys: BTreeMap<String, [u8; 32]>,
}

impl S3Tenants {
    /// The bucket key of a tenant's object key.
    pub fn key(&self, tenant: &str, key: &str) -> String {
        let prefix = self.prefixes.get(tenant).unwrap_or_else(|| panic!("tenant {tenant} is not on S3"));
        format!("{prefix}{key}")
    }

    /// The tenant's SSE-C key, if it uses SSE-C.
    pub fn sse_c_key(&self, tenant: &str) -> Option<&[u8; 32]> {
        self.sse_c_keys.get(tenant)
    }

    /// Every object in the bucket as `tenant/key` (the bucket key with the tenant's prefix
    /// replaced by `tenant/`; `?/key` for a key under no tenant's prefix), sorted. Directory
    /// markers (zero-byte `dir/` objects) are left out, as the local store's directories are
    /// ([`Bucket::keys`] shows them).
    pub async fn objects(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .bucket
            .keys("")
            .await
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .map(|k| {
                // The longest matching prefix wins (prefixes may nest).
                let owner =
                    self.prefixes.iter().filter(|(_, p)| k.starts_with(p.as_str())).max_by_key(|(_, p)| p.len());
                match owner {
                    Some((t, p)) => format!("{t}/{}", k.get(p.len()..).unwrap_or_default()),
                    None => format!("?/{k}"),
                }
            })
            .collect();
        out.sort();
        out
    }
}
