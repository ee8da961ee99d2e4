//! `idlm serve`: an HTTP server (axum on tokio) for any checkpoint `idlm sample` reads. Each model
//! runs on a thread of its own (`worker`) that steps the continuous-batching engine, so requests
//! join between network calls; the async side reads and checks requests (`api`, `limits`), admits
//! them into a bounded queue, and answers whole or as Server-Sent Events (`sse`). Ctrl-C or
//! SIGTERM stops accepting, lets running requests finish, then returns.

pub mod api;
mod ar_engine;
pub mod error;
pub mod limits;
pub mod metrics;
mod page;
pub mod prompt;
pub mod routes;
mod sse;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::Semaphore;

pub use ar_engine::ArEngine;
pub use limits::Limits;
pub use worker::ModelSpec;

use crate::{Error, Result};

/// What to serve, where, within which bounds.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The models (the first answers requests that name none).
    pub models: Vec<ModelSpec>,
    /// Address to listen on (port 0: any free port).
    pub addr: String,
    /// Request bounds.
    pub limits: Limits,
}

/// Load the models, listen, call `ready` with the bound address, and serve until Ctrl-C or
/// SIGTERM; running requests finish first.
pub fn serve(opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if opts.models.is_empty() {
        return Err(Error::Serve("no model to serve".into()));
    }
    for (i, m) in opts.models.iter().enumerate() {
        if opts.models[..i].iter().any(|o| o.name == m.name) {
            return Err(Error::Serve(format!(
                "two models are named '{}': name them (--ckpt NAME=PATH)",
                m.name
            )));
        }
    }
    if opts.limits.queue == 0 || opts.limits.queue > Semaphore::MAX_PERMITS {
        return Err(Error::Serve(format!(
            "queue {} must be in 1..={}",
            opts.limits.queue,
            Semaphore::MAX_PERMITS
        )));
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let mut infos = Vec::new();
    let mut jobs = Vec::new();
    let mut threads = Vec::new();
    for spec in &opts.models {
        let w = worker::spawn(spec.clone(), Arc::clone(&metrics))?;
        infos.push(w.info);
        jobs.push(w.jobs);
        threads.push(w.thread);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Serve(format!("cannot start the async runtime: {e}")))?;
    let state = Arc::new(routes::AppState {
        models: infos,
        jobs,
        queue: Arc::new(Semaphore::new(opts.limits.queue)),
        limits: opts.limits.clone(),
        metrics,
        next_id: AtomicU64::new(1),
    });
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.addr)
            .await
            .map_err(|e| Error::Serve(format!("cannot listen on {}: {e}", opts.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Serve(format!("no local address: {e}")))?;
        ready(addr);
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| Error::Serve(format!("server error: {e}")))
    });
    // The router (and with it every job sender) is gone: each model thread finishes its jobs and
    // ends.
    drop(rt);
    for t in threads {
        if t.join().is_err() {
            return Err(Error::Serve("a model thread panicked".into()));
        }
    }
    served
}

/// Resolves at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("idlm serve: stopping; running requests finish first");
}
