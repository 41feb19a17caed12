//! The versioned JSON API: requests are parsed into an [`Endpoint`] first, then handled.
//!
//! | method | path                  | does                                   |
//! |--------|-----------------------|----------------------------------------|
//! | PUT    | `/v1/files/{path}`    | streaming upload, 201 + receipt        |
//! | GET    | `/v1/files/{path}`    | streaming download, `Range` (206/416)  |
//! | HEAD   | `/v1/files/{path}`    | metadata only                          |
//! | DELETE | `/v1/files/{path}`    | remove, 204                            |
//! | GET    | `/v1/files/{dir}/`    | JSON listing, `?limit=&after=`         |

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::body::{empty, full, Body, BodyError};
use super::error::ApiError;
use crate::audit::AuditEvent;
use crate::auth::{Principal, Users};
use crate::digest::{parse_digest_field, to_digest_field};
use crate::path::{NameRefusal, PathError, RelPath};
use crate::storage::{ListCursor, ObjectMeta, RangeRequest};
use crate::transfer::{ClientInfo, TransferError, Transfers};

/// Largest listing page.
pub const MAX_LIST_LIMIT: usize = 1000;
const FILES_PREFIX: &str = "/v1/files/";

/// What a request asks for, decided before any handler runs.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Upload(RelPath),
    Download(RelPath),
    Stat(RelPath),
    Delete(RelPath),
    List(RelPath),
}

/// Per-connection state: the client's identity fields and the last credential audited.
#[derive(Debug)]
pub struct Connection {
    /// TLS and peer details for the audit trail.
    pub client: ClientInfo,
    last_credential: Mutex<Option<String>>,
    /// The second factor this connection passed (`X-Gateway-TOTP`), if any.
    mfa: crate::mfa::HttpsSession,
    /// Cancelled when the connection should finish after the answers in flight (its
    /// source was banned); the connection task watches it.
    pub end: tokio_util::sync::CancellationToken,
}

impl Connection {
    /// State for a new connection.
    pub fn new(client: ClientInfo) -> Connection {
        Connection {
            client,
            last_credential: Mutex::new(None),
            mfa: crate::mfa::HttpsSession::default(),
            end: tokio_util::sync::CancellationToken::new(),
        }
    }
}

/// The HTTPS application.
pub struct Api {
    directory: Arc<Users>,
    transfers: Transfers,
    hsts: HeaderValue,
    body_idle_timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("directory", &self.directory).finish()
    }
}

/// Why a request matched no endpoint; path errors are audited as refusals.
#[derive(Debug)]
enum RouteError {
    Path(PathError),
    Other(ApiError),
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Path(p) => p.into(),
            RouteError::Other(e) => e,
        }
    }
}

fn route(method: &Method, path: &str, names: NameRefusal) -> Result<Endpoint, RouteError> {
    let raw = if path == "/v1/files" {
        ""
    } else {
        path.strip_prefix(FILES_PREFIX)
            .ok_or_else(|| RouteError::Other(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")))?
    };
    let rel = RelPath::from_url_with(raw, names).map_err(RouteError::Path)?;
    let not_allowed = |allow: &'static str| {
        RouteError::Other(
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("allowed: {allow}"))
                .with_header(header::ALLOW, HeaderValue::from_static(allow)),
        )
    };
    if rel.is_dir() {
        return match *method {
            Method::GET => Ok(Endpoint::List(rel)),
            _ => Err(not_allowed("GET")),
        };
    }
    match *method {
        Method::PUT => Ok(Endpoint::Upload(rel)),
        Method::GET => Ok(Endpoint::Download(rel)),
        Method::HEAD => Ok(Endpoint::Stat(rel)),
        Method::DELETE => Ok(Endpoint::Delete(rel)),
        _ => Err(not_allowed("GET, HEAD, PUT, DELETE")),
    }
}

/// Parse a single-range `Range` header. Anything we do not serve (multiple ranges, other
/// units, bad syntax) is ignored, as RFC 9110 allows, and the whole object is sent.
fn parse_range(headers: &HeaderMap) -> RangeRequest {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeRequest::All;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeRequest::All };
    if spec.contains(',') {
        return RangeRequest::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeRequest::All };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => num(b).map(RangeRequest::Suffix),
        (false, true) => num(a).map(RangeRequest::From),
        (false, false) => num(a).zip(num(b)).map(|(a, b)| RangeRequest::Inclusive(a, b)),
        (true, true) => None,
    }
    .unwrap_or(RangeRequest::All)
}

fn http_date(t: SystemTime) -> Option<HeaderValue> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let s = time::OffsetDateTime::from(t).format(fmt).ok()?;
    HeaderValue::from_str(&s).ok()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn object_headers(headers: &mut HeaderMap, meta: &ObjectMeta) {
    // An object the gateway did not write has no digest it can vouch for: no ETag, no
    // Repr-Digest, rather than one that means something else.
    if let Some(sha256) = &meta.sha256 {
        let etag = format!("\"{}\"", hex::encode(sha256));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&to_digest_field(sha256)) {
            headers.insert("repr-digest", v);
        }
    }
    if let Some(v) = http_date(meta.modified) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
}

/// Longest the rest of an unread request body is read and discarded.
const DISCARD_TIME: Duration = Duration::from_secs(5);
/// Most of it that is read and discarded.
const DISCARD_BYTES: u64 = 64 << 20;

/// Read and drop what is left of a request body, within [`DISCARD_TIME`] and
/// [`DISCARD_BYTES`]; after that the body is dropped (HTTP/2 resets the stream, HTTP/1.1
/// closes the connection, lingering).
async fn discard_body(mut body: Incoming) {
    let drain = async {
        let mut discarded = 0u64;
        while discarded < DISCARD_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => discarded += frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl Api {
    /// The application over a user directory and the transfer path.
    pub fn new(
        directory: Arc<Users>,
        transfers: Transfers,
        hsts_max_age: Duration,
        body_idle_timeout: Duration,
    ) -> Api {
        let hsts = HeaderValue::from_str(&format!("max-age={}; includeSubDomains", hsts_max_age.as_secs()))
            .unwrap_or(HeaderValue::from_static("max-age=31536000; includeSubDomains"));
        Api { directory, transfers, hsts, body_idle_timeout }
    }

    /// Serve one request. Never fails: every error becomes a JSON response.
    pub async fn handle(&self, req: Request<Incoming>, conn: &Connection) -> Response<Body> {
        let (parts, mut body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let mut resp = match self.dispatch(&head, &mut body, conn).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        if !hyper::body::Body::is_end_stream(&body) {
            // Answered before the body was read (refused, or failed mid-upload): discard
            // the rest in the background, so the client reads the answer instead of an
            // HTTP/2 RST_STREAM under its upload (curl 7.x reports that as error 92) or,
            // on HTTP/1.1, so the connection can stay open.
            tokio::spawn(discard_body(body));
        }
        if head.method() == Method::HEAD {
            // A HEAD answer has no body: an error's JSON would be a protocol error on HTTP/2
            // (curl: error 92). Its length stays in Content-Length.
            let (mut parts, body) = resp.into_parts();
            if let Some(n) = hyper::body::Body::size_hint(&body).exact() {
                parts.headers.entry(header::CONTENT_LENGTH).or_insert(HeaderValue::from(n));
            }
            resp = Response::from_parts(parts, empty());
        }
        if resp.status() == StatusCode::FORBIDDEN && self.transfers.banned(conn.client.remote_addr.ip()) {
            // A banned source's kept-alive connection ends with this answer (HTTP/1.1: close;
            // HTTP/2: GOAWAY), so a flood over it stops costing a request each; its next
            // connection is refused at accept.
            if head.version() < hyper::Version::HTTP_2 {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            conn.end.cancel();
        }
        let h = resp.headers_mut();
        h.insert(header::STRICT_TRANSPORT_SECURITY, self.hsts.clone());
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    async fn authenticate(&self, headers: &HeaderMap, conn: &Connection) -> Result<Principal, ApiError> {
        // A connection opened before its source was banned gets no more guesses (nor records).
        if self.transfers.banned(conn.client.remote_addr.ip()) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "banned", "this source is banned"));
        }
        let value = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
        let cert = conn.client.client_cert.as_deref();
        let method = if value.is_none() && cert.is_some() { "client_certificate" } else { "bearer" };
        let directory = self.directory.current();
        let totp = headers.get(crate::mfa::HEADER).map(|v| v.to_str().unwrap_or(""));
        let ip = conn.client.remote_addr.ip();
        let authenticated = directory
            .authenticate_https(value, cert)
            // Then the account (disabled, expired, dormant, source), before any second factor.
            .and_then(|who| self.transfers.accounts().admit(who, ip))
            .and_then(|who| self.directory.mfa().check_https(&directory, who, totp, &conn.mfa, ip));
        match authenticated {
            Ok(who) => {
                let first_use = {
                    let mut last = conn.last_credential.lock().unwrap_or_else(|p| p.into_inner());
                    let first = last.as_deref() != Some(who.credential_id.as_str());
                    if first {
                        *last = Some(who.credential_id.clone());
                    }
                    first
                };
                if first_use {
                    let entry = crate::audit::AuditEntry {
                        result: Some("ok".into()),
                        ..conn.client.user_entry(AuditEvent::AuthSuccess, &who)
                    };
                    self.transfers.audit().append(entry, false).await.map_err(TransferError::from)?;
                    self.transfers.accounts().logged_in(&who.user);
                }
                Ok(who)
            }
            Err(failure) => {
                if let Some(offence) = crate::defender::auth_offence(method, &failure) {
                    self.transfers.offence(conn.client.remote_addr.ip(), offence);
                }
                self.transfers.alerts().auth_failure("https", conn.client.remote_addr.ip(), failure.user.as_deref());
                let entry = crate::audit::AuditEntry {
                    user: failure.user,
                    auth_method: Some(method.into()),
                    credential_id: failure.credential_id,
                    result: Some("error".into()),
                    error: Some(failure.reason.into()),
                    ..conn.client.entry(AuditEvent::AuthFailure)
                };
                self.transfers
                    .audit_auth_failure(entry, conn.client.remote_addr.ip())
                    .await
                    .map_err(TransferError::from)?;
                Err(ApiError::unauthorized())
            }
        }
    }

    async fn dispatch(
        &self,
        req: &Request<()>,
        body: &mut Incoming,
        conn: &Connection,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_owned();
        if !(path == "/v1/files" || path.starts_with(FILES_PREFIX)) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint"));
        }
        let who = self.authenticate(req.headers(), conn).await?;
        let endpoint = match route(req.method(), &path, self.transfers.names()) {
            Ok(e) => e,
            Err(RouteError::Path(why)) => {
                self.transfers.deny_path(&who, &conn.client, req.method().as_str(), &path, &why).await;
                return Err(why.into());
            }
            Err(RouteError::Other(e)) => return Err(e),
        };
        let client = &conn.client;
        match endpoint {
            Endpoint::Upload(rel) => self.upload(req, body, &who, client, rel).await,
            Endpoint::Download(rel) => self.download(req.headers(), &who, client, rel).await,
            Endpoint::Stat(rel) => {
                let meta = self.transfers.stat(&who, client, &rel).await?;
                let mut resp = Response::new(empty());
                object_headers(resp.headers_mut(), &meta);
                resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
                Ok(resp)
            }
            Endpoint::Delete(rel) => {
                self.transfers.delete(&who, client, &rel).await?;
                let mut resp = Response::new(empty());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok(resp)
            }
            Endpoint::List(rel) => self.list(req.uri().query(), &who, client, rel).await,
        }
    }

    async fn upload(
        &self,
        req: &Request<()>,
        body: &mut Incoming,
        who: &Principal,
        client: &ClientInfo,
        rel: RelPath,
    ) -> Result<Response<Body>, ApiError> {
        let digest_header = req.headers().get("content-digest").or_else(|| req.headers().get("repr-digest"));
        let expected = match digest_header {
            None => None,
            Some(v) => {
                let text = v
                    .to_str()
                    .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_digest", "digest header is not ASCII"))?;
                Some(
                    parse_digest_field(text)
                        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_digest", e.to_string()))?,
                )
            }
        };
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let mut upload = self.transfers.begin_upload(who, client, &rel, declared).await?;
        let max = self.transfers.max_object_size();
        if declared.is_some_and(|len| len > max) {
            // Refused before reading a byte of the body (still audited: started + failed).
            return Err(upload.fail(TransferError::TooLarge { max }).await.into());
        }
        loop {
            let frame = match tokio::time::timeout(self.body_idle_timeout, body.frame()).await {
                Err(_) => {
                    let msg = format!("request body stalled for more than {}s", self.body_idle_timeout.as_secs());
                    return Err(upload.fail(TransferError::Client(msg)).await.into());
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(upload.fail(TransferError::Client(format!("request body failed: {e}"))).await.into())
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    upload.write(data).await?;
                }
            }
        }
        let receipt = upload.finish(expected).await?;
        let mut resp = json(
            StatusCode::CREATED,
            serde_json::json!({
                "path": rel.display(),
                "size": receipt.size,
                "sha256": hex::encode(receipt.sha256),
                "transfer_id": receipt.transfer_id,
            }),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", hex::encode(receipt.sha256))) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        Ok(resp)
    }

    async fn download(
        &self,
        headers: &HeaderMap,
        who: &Principal,
        client: &ClientInfo,
        rel: RelPath,
    ) -> Result<Response<Body>, ApiError> {
        let range = parse_range(headers);
        let dl = self.transfers.download(who, client, &rel, range).await?;
        let partial = range != RangeRequest::All;
        let stream = dl.body.map_ok(Frame::data).map_err(|e| -> BodyError { Box::new(e) });
        let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
        object_headers(resp.headers_mut(), &dl.meta);
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(dl.range.len()));
        if partial {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let cr = format!("bytes {}-{}/{}", dl.range.start, dl.range.end.saturating_sub(1), dl.meta.size);
            if let Ok(v) = HeaderValue::from_str(&cr) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(resp)
    }

    async fn list(
        &self,
        query: Option<&str>,
        who: &Principal,
        client: &ClientInfo,
        rel: RelPath,
    ) -> Result<Response<Body>, ApiError> {
        let mut limit = MAX_LIST_LIMIT;
        let mut after: Option<ListCursor> = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", "query is not valid UTF-8"))?;
            match k {
                "limit" => {
                    limit = v.parse::<usize>().ok().filter(|n| (1..=MAX_LIST_LIMIT).contains(n)).ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_query",
                            format!("limit must be a number from 1 to {MAX_LIST_LIMIT}"),
                        )
                    })?
                }
                "after" => {
                    after = Some(ListCursor::from_client(&v).ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_query",
                            format!(
                                "after must be the non-empty `next` value of a previous page (at most {} bytes)",
                                ListCursor::MAX_LEN
                            ),
                        )
                    })?)
                }
                other => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        format!("unknown query parameter {other:?}; accepted: limit, after"),
                    ))
                }
            }
        }
        let page = self.transfers.list(who, client, &rel, after.as_ref(), limit).await?;
        let entries: Vec<_> = page
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "type": e.kind,
                    "size": e.size,
                    "modified": rfc3339(e.modified),
                })
            })
            .collect();
        Ok(json(StatusCode::OK, serde_json::json!({ "path": rel.display(), "entries": entries, "next": page.next })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_default(method: &Method, path: &str) -> Result<Endpoint, RouteError> {
        route(method, path, NameRefusal::default())
    }

    #[test]
    fn routes() {
        assert_eq!(
            route_default(&Method::PUT, "/v1/files/a/b").unwrap(),
            Endpoint::Upload(RelPath::from_url("a/b").unwrap())
        );
        assert_eq!(
            route_default(&Method::GET, "/v1/files/a/").unwrap(),
            Endpoint::List(RelPath::from_url("a/").unwrap())
        );
        assert_eq!(route_default(&Method::GET, "/v1/files").unwrap(), Endpoint::List(RelPath::from_url("").unwrap()));
        assert_eq!(
            ApiError::from(route_default(&Method::PUT, "/v1/files/a/").unwrap_err()).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            ApiError::from(route_default(&Method::POST, "/v1/files/a").unwrap_err()).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            ApiError::from(route_default(&Method::GET, "/v1/files/%2e%2e/x").unwrap_err()).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(ApiError::from(route_default(&Method::GET, "/v2/x").unwrap_err()).status, StatusCode::NOT_FOUND);
        // A right-to-left override: refused by default, a bad path (400) naming the code point.
        let refused = ApiError::from(route_default(&Method::PUT, "/v1/files/a%E2%80%AEgnp.exe").unwrap_err());
        assert_eq!((refused.status, refused.code), (StatusCode::BAD_REQUEST, "invalid_path"));
        assert_eq!(refused.message, "U+202E RIGHT-TO-LEFT OVERRIDE is not allowed in names");
        assert!(route(&Method::PUT, "/v1/files/a%E2%80%AEgnp.exe", NameRefusal::Nothing).is_ok());
    }

    #[test]
    fn ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            parse_range(&m)
        };
        assert_eq!(h("bytes=0-99"), RangeRequest::Inclusive(0, 99));
        assert_eq!(h("bytes=100-"), RangeRequest::From(100));
        assert_eq!(h("bytes=-5"), RangeRequest::Suffix(5));
        assert_eq!(h("bytes=0-1,5-6"), RangeRequest::All);
        assert_eq!(h("items=0-1"), RangeRequest::All);
        assert_eq!(h("bytes=x-1"), RangeRequest::All);
        assert_eq!(parse_range(&HeaderMap::new()), RangeRequest::All);
    }
}
