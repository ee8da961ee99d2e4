//! The HTTP routes: completions (whole or streamed), models, health, metrics and the page. Bodies
//! are read here under the size and time limits, then parsed field by field (`api::parse`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::Semaphore;

use super::api::{self, ModelInfo, completion_json};
use super::error::ApiError;
use super::limits::Limits;
use super::metrics::Metrics;
use super::page;
use super::sse::{StreamParts, completion_stream};
use super::worker::{Job, Reply};

/// What the handlers share.
pub struct AppState {
    /// The served models, in `--ckpt` order (the first is the default).
    pub models: Vec<ModelInfo>,
    /// Each model thread's job queue, in the same order.
    pub jobs: Vec<std::sync::mpsc::Sender<Job>>,
    /// Request bounds.
    pub limits: Limits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// One permit per admitted request.
    pub queue: Arc<Semaphore>,
    /// Next completion number.
    pub next_id: AtomicU64,
}

impl AppState {
    /// Requests admitted and not finished.
    pub fn queue_depth(&self) -> usize {
        self.limits
            .queue
            .saturating_sub(self.queue.available_permits())
    }
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let names: Vec<&str> = st.models.iter().map(|m| m.name.as_str()).collect();
    Json(json!({"status": "ok", "models": names, "queue_depth": st.queue_depth()})).into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let data: Vec<serde_json::Value> = st
        .models
        .iter()
        .map(|m| {
            json!({"id": m.name, "object": "model", "created": 0, "owned_by": "idlm",
                   "process": m.process, "length": m.length, "default_steps": m.steps,
                   "default_seed": m.seed, "noise_removal": m.noise_removal, "top_p": m.top_p,
                   "checkpoint": m.checkpoint, "checkpoint_step": m.checkpoint_step})
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.queue_depth(), st.limits.queue),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_string();
    ApiError::new(StatusCode::NOT_FOUND, None, format!("no route {path}")).into_response()
}

async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let t0 = Instant::now();
    let r = complete(&st, req, t0)
        .await
        .unwrap_or_else(|e| e.into_response());
    st.metrics.response(r.status().as_u16());
    r
}

/// The body, within the size and time limits.
async fn read_body(req: Request, limits: &Limits) -> Result<Bytes, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!("the body is larger than {} bytes", limits.max_body),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(too_big());
    }
    let read = axum::body::to_bytes(req.into_body(), limits.max_body);
    match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Some("body"),
            format!(
                "the body did not arrive within {} s",
                limits.body_timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if e.to_string().contains("length limit") => Err(too_big()),
        Ok(Err(e)) => Err(ApiError::field(
            "body",
            format!("the body could not be read: {e}"),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

async fn complete(st: &Arc<AppState>, req: Request, t0: Instant) -> Result<Response, ApiError> {
    let body = read_body(req, &st.limits).await?;
    let p = api::parse(&body, &st.models, &st.limits)?;
    let permit = st.queue.clone().try_acquire_owned().map_err(|_| {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            format!(
                "the queue is full ({} requests); retry later",
                st.limits.queue
            ),
        );
        e.retry_after = Some(st.limits.retry_after_s);
        e
    })?;
    let (Some(info), Some(jobs)) = (st.models.get(p.model), st.jobs.get(p.model)) else {
        return Err(ApiError::field("model", "no such model"));
    };
    let (reply, mut rx) = tokio::sync::mpsc::unbounded_channel();
    jobs.send(Job {
        params: p.clone(),
        reply,
    })
    .map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the model thread has stopped",
        )
    })?;
    let id = format!("cmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    if p.stream {
        return Ok(completion_stream(StreamParts {
            rx,
            permit,
            metrics: Arc::clone(&st.metrics),
            id,
            model: info.name.clone(),
            params: p,
            t0,
        }));
    }
    let failed = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, m);
    loop {
        match rx.recv().await {
            Some(Reply::Step(_)) => {}
            Some(Reply::Done(choices)) => {
                let secs = t0.elapsed().as_secs_f64();
                st.metrics.latency(secs);
                drop(permit);
                return Ok(
                    Json(completion_json(&id, &info.name, &p, &choices, secs)).into_response()
                );
            }
            Some(Reply::Failed(m)) => return Err(failed(m)),
            None => return Err(failed("the model thread stopped".into())),
        }
    }
}
