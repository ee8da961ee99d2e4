//! A streamed completion: one Server-Sent Event per denoising step of each sequence (its text now,
//! the positions still masked and those revealed at the step), then the whole completion as the
//! non-streamed answer has it, then `[DONE]`. The queue slot is held until the stream ends, and
//! dropping the stream (the client left) closes the job's channel, which frees its engine slots.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{Params, completion_json, step_json};
use super::error::ApiError;
use super::metrics::Metrics;
use super::worker::Reply;

/// Where a stream is.
enum Phase {
    Running,
    Closing,
    Over,
}

struct Stream {
    rx: UnboundedReceiver<Reply>,
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
    id: String,
    model: String,
    params: Params,
    t0: Instant,
    phase: Phase,
}

/// Everything a streamed completion needs.
pub struct StreamParts {
    /// The job's replies.
    pub rx: UnboundedReceiver<Reply>,
    /// Its queue slot.
    pub permit: OwnedSemaphorePermit,
    /// Server counters.
    pub metrics: Arc<Metrics>,
    /// Completion id.
    pub id: String,
    /// Model name.
    pub model: String,
    /// The request.
    pub params: Params,
    /// When the request arrived.
    pub t0: Instant,
}

fn data(v: &serde_json::Value) -> Event {
    Event::default().data(v.to_string())
}

/// The SSE response of a streamed completion.
pub fn completion_stream(p: StreamParts) -> Response {
    let st = Stream {
        rx: p.rx,
        permit: Some(p.permit),
        metrics: p.metrics,
        id: p.id,
        model: p.model,
        params: p.params,
        t0: p.t0,
        phase: Phase::Running,
    };
    let events = stream::unfold(st, |mut st| async move {
        let ev = match st.phase {
            Phase::Over => return None,
            Phase::Closing => {
                st.phase = Phase::Over;
                st.permit = None;
                Event::default().data("[DONE]")
            }
            Phase::Running => match st.rx.recv().await {
                Some(Reply::Step(u)) => data(&step_json(&st.id, &st.model, &u)),
                Some(Reply::Done(choices)) => {
                    let secs = st.t0.elapsed().as_secs_f64();
                    st.metrics.latency(secs);
                    st.phase = Phase::Closing;
                    data(&completion_json(
                        &st.id, &st.model, &st.params, &choices, secs,
                    ))
                }
                Some(Reply::Failed(m)) => {
                    st.phase = Phase::Closing;
                    data(&ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, m).body())
                }
                None => {
                    st.phase = Phase::Closing;
                    let m = "the model thread stopped";
                    data(&ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, m).body())
                }
            },
        };
        Some((Ok::<_, Infallible>(ev), st))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
