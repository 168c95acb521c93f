//! The accept loop and connection lifecycle (in place of `axum::serve`, which sets no header
//! timeout): HTTP/1.1 connections served by hyper with a header read timeout, and a shutdown in
//! three phases: stop accepting; keep open connections serving while in-flight requests drain
//! (a request that arrives on one gets a 503 from the edge guard, not a reset connection); then
//! close every connection once its current response is written.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long connections may take to finish their last response after the drain; past it they
/// are dropped (a client that stopped reading must not hold the process).
const CLOSE_GRACE_S: u64 = 5;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// Serves `app` on `listener` until `shutdown` resolves, then waits for `drained` (in-flight
/// requests finished or cancelled) while open connections keep answering, then closes them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    drained: impl Future<Output = ()>,
) {
    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        app.clone(),
                        header_timeout,
                        close_rx.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                }
            },
        }
    }
    drop(listener);
    drained.await;
    // Ignored error: no receiver left means no connection left to close.
    let _ = close_tx.send(true);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(CLOSE_GRACE_S), all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown: connections still open after the grace period; dropping them"
        );
        connections.shutdown().await;
    }
}

/// One connection: HTTP/1.1 with keep-alive; `header_timeout` bounds the wait for a request's
/// headers, idle time between requests included, so slow or silent clients are disconnected.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut close_rx: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // The guard `wait_for` returns is not Send: drop it before awaiting the connection.
        _ = async { drop(close_rx.wait_for(|close| *close).await) } => {
            // Finishes the response in progress (if any), then closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that hang up are routine; they are not server errors.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
