//! The console's HTTP surface: the page, its assets, the JSON the page
//! polls (`/api/info`, `/api/job`, `/api/broker`) and `/metrics`.
//! GET and HEAD only; a request with a body is refused (the console is
//! read-only), an unknown path is a 404 naming it, and hyper refuses
//! request heads over its buffer limit (431). Snapshots and their encoding
//! run on the blocking pool, so the async thread only moves bytes.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::{Watched, assets, metrics};

/// How often the page polls: the batch interval within these bounds.
const MIN_REFRESH_MS: u64 = 250;
const MAX_REFRESH_MS: u64 = 2000;

pub(crate) fn router(watched: Watched) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/assets/{file}", get(asset))
        .route("/api/info", get(info))
        .route("/api/job", get(job))
        .route("/api/broker", get(broker))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .layer(middleware::from_fn(read_only))
        .with_state(watched)
}

/// Refuses what a read-only console has no use for before any handler
/// runs: methods other than GET and HEAD, and request bodies.
async fn read_only(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not allowed: the console is read-only (GET and HEAD only)\n",
                request.method()
            ),
        );
    }
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|l| l.as_bytes() != b"0");
    if has_body {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted: the console is read-only\n".into(),
        );
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    missing(uri.path())
}

fn missing(path: &str) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "no page at {path}: the console serves /, /api/info, /api/job or /api/broker, and /metrics\n"
        ),
    )
}

async fn page() -> Response {
    let Some(index) = assets::find("index.html") else {
        return text(StatusCode::NOT_FOUND, "no page in this build\n".into());
    };
    (
        [
            (header::CONTENT_TYPE, index.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        index.bytes,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match assets::find(&file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.bytes,
        )
            .into_response(),
        None => missing(&format!("/assets/{file}")),
    }
}

#[derive(Serialize)]
struct Info {
    kind: &'static str,
    name: String,
    version: &'static str,
    refresh_ms: u64,
}

async fn info(State(watched): State<Watched>) -> Response {
    let info = match &watched {
        Watched::Job(monitor) => Info {
            kind: "job",
            name: monitor.job().to_owned(),
            version: env!("CARGO_PKG_VERSION"),
            refresh_ms: (monitor.batch_interval().as_millis() as u64)
                .clamp(MIN_REFRESH_MS, MAX_REFRESH_MS),
        },
        Watched::Broker(_) => Info {
            kind: "broker",
            name: "sluice broker".into(),
            version: env!("CARGO_PKG_VERSION"),
            refresh_ms: 1000,
        },
    };
    json_response(serde_json::to_vec(&info))
}

/// Runs `make` on the blocking pool and answers with what it made.
async fn off_thread(make: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(make).await.unwrap_or_else(|e| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the snapshot failed: {e}\n"),
        )
    })
}

fn json_response(body: serde_json::Result<Vec<u8>>) -> Response {
    match body {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the snapshot: {e}\n"),
        ),
    }
}

async fn job(State(watched): State<Watched>, uri: Uri) -> Response {
    let Watched::Job(monitor) = watched else {
        return missing(uri.path());
    };
    off_thread(move || {
        let mut snapshot = monitor.snapshot();
        snapshot.results = monitor.results();
        json_response(serde_json::to_vec(&snapshot))
    })
    .await
}

async fn broker(State(watched): State<Watched>, uri: Uri) -> Response {
    let Watched::Broker(status) = watched else {
        return missing(uri.path());
    };
    off_thread(move || json_response(serde_json::to_vec(&status.snapshot()))).await
}

async fn prometheus(State(watched): State<Watched>, headers: HeaderMap) -> Response {
    let format =
        metrics::Format::negotiate(headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()));
    off_thread(move || {
        let body = match &watched {
            Watched::Job(monitor) => metrics::job_text(monitor.snapshot(), format),
            Watched::Broker(status) => metrics::broker_text(status.snapshot(), format),
        };
        (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response()
    })
    .await
}
