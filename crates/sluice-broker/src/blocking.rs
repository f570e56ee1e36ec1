//! Runs file work (store reads and writes, fsyncs, state files) on tokio's
//! blocking pool, so that it never stalls the async threads that serve the
//! other connections. A task that panics or is cancelled becomes an error
//! the caller answers or closes one connection with; it never ends the
//! server.

/// Runs `f` on the blocking pool; `what` names the work in the error.
pub(crate) async fn run_blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("{what} task failed: {e}"))
}

/// As [`run_blocking`], for handlers that answer a failed task with an
/// error response: the failure is logged and becomes `None`.
pub(crate) async fn logged_blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    run_blocking(what, f)
        .await
        .inspect_err(|e| tracing::error!("{e}"))
        .ok()
}
