//! Counters for `GET /metrics` in the Prometheus text format: requests by status, queue depth,
//! tokens and network calls, tokens per second of sampling time, and a latency histogram.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Server-wide counters (shared by the HTTP tasks and the model threads).
#[derive(Debug, Default)]
pub struct Metrics {
    responses: Mutex<BTreeMap<u16, u64>>,
    /// Counts per bucket (then +Inf), sum of seconds.
    latency: Mutex<(Vec<u64>, f64)>,
    tokens: AtomicU64,
    nfe: AtomicU64,
    steps: AtomicU64,
    busy_ns: AtomicU64,
    cancelled: AtomicU64,
}

impl Metrics {
    /// A response was sent with this status.
    pub fn response(&self, status: u16) {
        if let Ok(mut m) = self.responses.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// A completion took `secs` from its arrival to its last byte.
    pub fn latency(&self, secs: f64) {
        if let Ok(mut h) = self.latency.lock() {
            if h.0.is_empty() {
                h.0 = vec![0; BUCKETS.len() + 1];
            }
            let b = BUCKETS.partition_point(|&u| u < secs);
            h.0[b] += 1;
            h.1 += secs;
        }
    }

    /// A request finished with `tokens` tokens and `nfe` network calls over its sequences.
    pub fn finished(&self, tokens: usize, nfe: usize) {
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.nfe.fetch_add(nfe as u64, Ordering::Relaxed);
    }

    /// An engine step (network calls and updates) took `d`.
    pub fn engine_step(&self, d: Duration) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.busy_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// A request was dropped because its client went away.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text, with the current queue depth and capacity.
    pub fn render(&self, queue_depth: usize, queue_capacity: usize) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[String]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(s, "{name}{l}");
            }
        };
        let responses: Vec<String> = self
            .responses
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(c, n)| format!("{{code=\"{c}\"}} {n}"))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "idlm_requests_total",
            "counter",
            "Completion requests answered, by HTTP status.",
            &responses,
        );
        metric(
            "idlm_queue_depth",
            "gauge",
            "Completion requests admitted and not finished (sampling or waiting for a slot).",
            &[format!(" {queue_depth}")],
        );
        metric(
            "idlm_queue_capacity",
            "gauge",
            "Most requests admitted at once; past it, 429.",
            &[format!(" {queue_capacity}")],
        );
        let tokens = self.tokens.load(Ordering::Relaxed);
        let busy = self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        metric(
            "idlm_generated_tokens_total",
            "counter",
            "Tokens of finished completions.",
            &[format!(" {tokens}")],
        );
        metric(
            "idlm_nfe_total",
            "counter",
            "Network calls spent on finished sequences (each counted per sequence).",
            &[format!(" {}", self.nfe.load(Ordering::Relaxed))],
        );
        metric(
            "idlm_engine_steps_total",
            "counter",
            "Batched engine steps (network calls shared by the live sequences).",
            &[format!(" {}", self.steps.load(Ordering::Relaxed))],
        );
        metric(
            "idlm_sampling_seconds_total",
            "counter",
            "Seconds the model threads spent sampling.",
            &[format!(" {busy}")],
        );
        let tps = if busy > 0.0 {
            tokens as f64 / busy
        } else {
            0.0
        };
        metric(
            "idlm_tokens_per_second",
            "gauge",
            "Generated tokens per second of sampling time, since start.",
            &[format!(" {tps}")],
        );
        metric(
            "idlm_cancelled_total",
            "counter",
            "Requests dropped because their client disconnected.",
            &[format!(" {}", self.cancelled.load(Ordering::Relaxed))],
        );
        let (counts, sum) = self
            .latency
            .lock()
            .map(|h| (h.0.clone(), h.1))
            .unwrap_or_default();
        let counts = if counts.is_empty() {
            vec![0; BUCKETS.len() + 1]
        } else {
            counts
        };
        let mut lines = Vec::new();
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            lines.push(format!("_bucket{{le=\"{le}\"}} {cum}"));
        }
        lines.push(format!("_sum {sum}"));
        lines.push(format!("_count {cum}"));
        metric(
            "idlm_request_duration_seconds",
            "histogram",
            "Seconds from a completion request's arrival to its last byte (200s only).",
            &lines,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let m = Metrics::default();
        m.latency(0.003);
        m.latency(0.3);
        m.latency(500.0);
        m.response(200);
        m.response(429);
        m.response(200);
        let t = m.render(2, 8);
        assert!(
            t.contains("idlm_request_duration_seconds_bucket{le=\"0.005\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("idlm_request_duration_seconds_bucket{le=\"0.5\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("idlm_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("idlm_request_duration_seconds_count 3\n"), "{t}");
        assert!(t.contains("idlm_requests_total{code=\"200\"} 2\n"), "{t}");
        assert!(t.contains("idlm_requests_total{code=\"429\"} 1\n"), "{t}");
        assert!(t.contains("idlm_queue_depth 2\n"), "{t}");
    }
}
