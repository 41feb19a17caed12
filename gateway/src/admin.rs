//! The admin listener: Prometheus `/metrics`, `/healthz` (the process answers) and `/readyz`
//! (it should get traffic: not draining, the audit trail writable, the TLS certificate valid,
//! every tenant's storage reachable), plain HTTP/1.1, meant for loopback or a private network.
//! `/metrics` asks for the configured bearer token, if any; the health endpoints never do, so
//! load balancers and container runtimes can call them.
//!
//! `/bans` (GET: the defender's bans as JSON) and `/bans/ADDR` (DELETE: end that ban) need
//! the admin token, and are refused when none is configured: `gateway bans` calls them.
//! So do `/users` (GET: every account's status and last login) and `/users/NAME/disable`,
//! `/users/NAME/enable` (POST), which `gateway users list|disable|enable` call.
//!
//! On shutdown readiness flips to 503 first (`draining`), then the front ends drain; the
//! listener closes last.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::audit::AuditLog;
use crate::defender::Defender;
use crate::storage::ObjectStore;

/// How long a storage check result is reused (a load balancer polling often costs the store
/// one request per tenant per period at most).
const STORAGE_CHECK_TTL: Duration = Duration::from_secs(5);
/// Longest a storage check may take before the tenant counts as unreachable.
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a request to the admin listener may take to send its headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/readyz` looks at.
pub struct Readiness {
    draining: AtomicBool,
    audit: AuditLog,
    cert: Arc<gateway_certs::ReloadableCert>,
    store: Arc<dyn ObjectStore>,
    tenants: Vec<String>,
    /// Last storage check: when, and the tenants that failed it (with why).
    storage: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("draining", &self.draining).field("tenants", &self.tenants).finish()
    }
}

impl Readiness {
    /// Readiness over these parts of a gateway.
    pub fn new(
        audit: AuditLog,
        cert: Arc<gateway_certs::ReloadableCert>,
        store: Arc<dyn ObjectStore>,
        tenants: Vec<String>,
    ) -> Readiness {
        Readiness {
            draining: AtomicBool::new(false),
            audit,
            cert,
            store,
            tenants,
            storage: tokio::sync::Mutex::new(None),
        }
    }

    /// From now on `/readyz` answers 503 `draining`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Every reason not to send traffic here; empty when ready.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            problems.push("draining: shutting down".to_owned());
        }
        if let Some(why) = self.audit.broken() {
            problems.push(format!("audit trail: {why}"));
        }
        let cert = self.cert.current();
        if cert.info.not_after <= time::OffsetDateTime::now_utc() {
            problems.push(format!("TLS certificate {} expired", cert.info.sha256_fingerprint));
        }
        problems.extend(self.storage_problems().await);
        problems
    }

    async fn storage_problems(&self) -> Vec<String> {
        let mut last = self.storage.lock().await;
        if let Some((at, problems)) = last.as_ref() {
            if at.elapsed() < STORAGE_CHECK_TTL {
                return problems.clone();
            }
        }
        let checks = self.tenants.iter().map(|t| async move {
            match tokio::time::timeout(STORAGE_CHECK_TIMEOUT, self.store.ready(t)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("storage of tenant {t}: {e}")),
                Err(_) => Some(format!("storage of tenant {t}: no answer within {}s", STORAGE_CHECK_TIMEOUT.as_secs())),
            }
        });
        let problems: Vec<String> = futures_util::future::join_all(checks).await.into_iter().flatten().collect();
        *last = Some((Instant::now(), problems.clone()));
        problems
    }
}

/// Serve the admin endpoints on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    token_sha256: Option<[u8; 32]>,
    defender: Option<Arc<Defender>>,
    accounts: crate::accounts::Accounts,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let conns = tokio_util::task::TaskTracker::new();
    let mut last_error: Option<String> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "admin listener: accept failed");
                        last_error = Some(msg);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (readiness, defender, accounts) = (readiness.clone(), defender.clone(), accounts.clone());
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let (readiness, defender, accounts) = (readiness.clone(), defender.clone(), accounts.clone());
                async move {
                    if req.uri().path() == "/users" || req.uri().path().starts_with("/users/") {
                        return Ok(users(&req, token_sha256, &accounts, peer.ip()).await);
                    }
                    Ok::<_, std::convert::Infallible>(handle(req, &readiness, token_sha256, defender.as_deref()).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn authorized(req: &Request<Incoming>, token_sha256: Option<[u8; 32]>) -> bool {
    let Some(want) = token_sha256 else { return true };
    let Some(given) =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got = crate::digest::sha256(given.trim().as_bytes());
    // Compare every byte, no early exit.
    got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn handle(
    req: Request<Incoming>,
    readiness: &Readiness,
    token_sha256: Option<[u8; 32]>,
    defender: Option<&Defender>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/bans" || path.starts_with("/bans/") {
        return bans(&req, token_sha256, defender);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let problems = readiness.problems().await;
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", problems.join("\n")))
            }
        }
        "/metrics" => {
            if !authorized(&req, token_sha256) {
                let mut resp = text(StatusCode::UNAUTHORIZED, "bearer token required\n".into());
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"admin\""));
                return resp;
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut resp = text(StatusCode::OK, crate::metrics::metrics().render(now));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "endpoints: /metrics, /healthz, /readyz, /bans, /users\n".into()),
    }
}

/// The admin token's answer to a request without it (or `None` when it may go on).
fn token_refusal(req: &Request<Incoming>, token_sha256: Option<[u8; 32]>, what: &str) -> Option<Response<Full<Bytes>>> {
    if token_sha256.is_none() {
        return Some(text(StatusCode::FORBIDDEN, format!("{what} needs admin.token_file to be configured\n")));
    }
    if !authorized(req, token_sha256) {
        let mut resp = text(StatusCode::UNAUTHORIZED, "bearer token required\n".into());
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"admin\""));
        return Some(resp);
    }
    None
}

/// `GET /users`, `POST /users/NAME/disable`, `POST /users/NAME/enable`. Only with the admin
/// token; each change is audited with the caller's address.
async fn users(
    req: &Request<Incoming>,
    token_sha256: Option<[u8; 32]>,
    accounts: &crate::accounts::Accounts,
    caller: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    if let Some(refused) = token_refusal(req, token_sha256, "/users") {
        return refused;
    }
    let path = req.uri().path();
    let action = path.strip_prefix("/users/").and_then(|rest| rest.rsplit_once('/'));
    match (req.method(), action) {
        (&Method::GET, None) if path == "/users" => {
            let body = serde_json::to_string(&accounts.list()).unwrap_or_else(|_| "[]".into());
            let mut resp = text(StatusCode::OK, body + "\n");
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        (&Method::POST, Some((name, verb @ ("disable" | "enable")))) => {
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            let result = if verb == "disable" {
                accounts.disable(&name, Some(caller)).await
            } else {
                accounts.enable(&name, Some(caller)).await
            };
            match result {
                Ok(change) => text(StatusCode::OK, change.message + "\n"),
                Err(e @ crate::accounts::AccountError::UnknownUser(_)) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        _ => {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET /users, POST /users/NAME/disable or /users/NAME/enable\n".into())
        }
    }
}

/// `GET /bans` and `DELETE /bans/ADDR` (an address, or an IPv6 network as listed, `/` as
/// is or as `%2F`). Only with the admin token.
fn bans(req: &Request<Incoming>, token_sha256: Option<[u8; 32]>, defender: Option<&Defender>) -> Response<Full<Bytes>> {
    if token_sha256.is_none() {
        return text(StatusCode::FORBIDDEN, "/bans needs admin.token_file to be configured\n".into());
    }
    if !authorized(req, token_sha256) {
        let mut resp = text(StatusCode::UNAUTHORIZED, "bearer token required\n".into());
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"admin\""));
        return resp;
    }
    let Some(defender) = defender else {
        return text(StatusCode::NOT_FOUND, "the defender is disabled ([defender] enabled = false)\n".into());
    };
    let now = std::time::SystemTime::now();
    let path = req.uri().path();
    match (req.method(), path.strip_prefix("/bans/")) {
        (&Method::GET, None) => {
            let body = serde_json::to_string(&defender.bans(now)).unwrap_or_else(|_| "[]".into());
            let mut resp = text(StatusCode::OK, body + "\n");
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        (&Method::DELETE, Some(addr)) => {
            let addr = percent_encoding::percent_decode_str(addr).decode_utf8_lossy();
            let ip = addr.split_once('/').map_or(&*addr, |(ip, _)| ip);
            let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                let shown: String = addr.chars().filter(|c| !c.is_control()).take(64).collect();
                return text(StatusCode::BAD_REQUEST, format!("not an IP address: {shown:?}\n"));
            };
            if defender.remove(ip, now) {
                text(StatusCode::OK, format!("unbanned {}\n", defender.source_of(ip)))
            } else {
                text(StatusCode::NOT_FOUND, format!("{} is not banned\n", defender.source_of(ip)))
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET /bans or DELETE /bans/ADDR\n".into()),
    }
}
