//! The accept loop both frontends share: it only accepts.
//!
//! A semaphore caps concurrent connections (when all slots are taken the loop waits rather
//! than accepting and dropping); accept errors such as `EMFILE` back off instead of
//! spinning; every connection runs in its own task, where handshakes happen under their own
//! timeouts. The loop returns when `shutdown` resolves, closing the listener; draining the
//! connections is the caller's business (it owns the returned tasks).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Accept until `shutdown`, at most `max_connections` at once; `serve` runs per connection.
/// Returns the connection tasks still running.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
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
