//! The accept loop both frontends share: it only accepts.
//!
//! A semaphore caps concurrent connections (when all slots are taken the loop waits rather
//! than accepting and dropping); an optional [`SourceRateLimit`] closes connections from a
//! source address that opens them faster than allowed; accept errors such as `EMFILE` back
//! off instead of spinning; every connection runs in its own task, where handshakes happen
//! under their own timeouts. The loop returns when `shutdown` resolves, closing the
//! listener; draining the connections is the caller's business (it owns the returned tasks).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Source addresses tracked before idle ones are forgotten.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// A token bucket per source address: `rate` new connections per second, bursts of `rate`.
#[derive(Debug)]
pub struct SourceRateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl SourceRateLimit {
    /// `per_second` connections per source per second; 0 means no limit (`None`).
    pub fn new(per_second: u32) -> Option<SourceRateLimit> {
        (per_second > 0).then(|| SourceRateLimit {
            rate: f64::from(per_second),
            burst: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Take a token for `ip`; false when its bucket is empty.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_SOURCES {
            // Forget sources whose buckets have refilled: they carry no state worth keeping.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Accept until `shutdown`, at most `max_connections` at once and, with `limit`, at most its
/// rate per source address; `serve` runs per connection. Returns the connection tasks still
/// running.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    limit: Option<SourceRateLimit>,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> JoinSet<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Some(limit) = &limit {
            if !limit.admit(peer.ip(), Instant::now()) {
                tracing::warn!(%peer, "connection rate from this source exceeded; closed");
                continue;
            }
        }
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let conn = serve(tcp, peer);
        tasks.spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
    drop(listener);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_per_source() {
        let limit = SourceRateLimit::new(10).unwrap();
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let admitted = (0..100).filter(|_| limit.admit(a, t0)).count();
        assert_eq!(admitted, 10, "a burst of one second's worth");
        assert!(limit.admit(b, t0), "other sources are not affected");
        assert!(!limit.admit(a, t0));
        assert!(limit.admit(a, t0 + Duration::from_millis(150)), "refills at the rate");
        assert!(SourceRateLimit::new(0).is_none());
    }
}
