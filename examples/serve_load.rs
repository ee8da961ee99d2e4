//! Load test of `idlm serve` (loopback only, bounded in requests and time): C concurrent clients
//! send R completions of one model, then the same requests go one at a time, optionally for a
//! second model (the AR baseline) too; p50/p99 latency, tokens/s, 429s and other errors, and the
//! server's resident memory idle, after a warm-up round and after the run. bench/serve_load.sh starts the servers and runs it.
//!
//! cargo run --release --example serve_load -- --addr 127.0.0.1:PORT --pid PID --model student
//!     --steps 4 [--clients 64] [--requests 10000] [--serial 500] [--ar ar --ar-requests 1000]
//!     [--max-seconds 900] [--out results.json]

#[path = "../tests/common/http.rs"]
mod http;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    tokens: u64,
    nfe: u64,
    refused_429: u64,
    errors: Vec<String>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} wants a number, got {v}"))
    })
}

fn rss_mib(pid: Option<u32>) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Send `total` requests from `clients` threads (each retries its request after a 429, counted);
/// stops early at `deadline`.
fn run(addr: &str, clients: usize, total: usize, body: &Value, deadline: Instant) -> Value {
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, tally, addr, body) =
                (next.clone(), tally.clone(), addr.to_string(), body.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || Instant::now() > deadline {
                        break;
                    }
                    let mut b = body.clone();
                    b["seed"] = json!(i);
                    loop {
                        let t = Instant::now();
                        let r = http::post(&addr, "/v1/completions", &b);
                        let secs = t.elapsed().as_secs_f64();
                        let mut tl = tally.lock().unwrap();
                        match r.status {
                            200 => {
                                let v = r.json();
                                tl.latencies.push(secs);
                                tl.tokens += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                                tl.nfe += v["usage"]["nfe"].as_u64().unwrap_or(0);
                                break;
                            }
                            429 => {
                                tl.refused_429 += 1;
                                drop(tl);
                                std::thread::sleep(Duration::from_millis(20));
                                if Instant::now() > deadline {
                                    break;
                                }
                            }
                            s => {
                                tl.errors.push(format!("{s}: {:.200}", r.text()));
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut tl = tally.lock().unwrap();
    tl.latencies.sort_by(f64::total_cmp);
    let l = &tl.latencies;
    json!({
        "clients": clients, "requests": total, "completed": l.len(), "wall_seconds": wall,
        "requests_per_s": l.len() as f64 / wall,
        "tokens_per_s": tl.tokens as f64 / wall, "tokens": tl.tokens, "nfe": tl.nfe,
        "p50_s": pct(l, 0.5), "p99_s": pct(l, 0.99), "max_s": pct(l, 1.0),
        "refused_429": tl.refused_429, "errors": tl.errors.len(),
        "first_errors": tl.errors.iter().take(5).collect::<Vec<_>>(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, "--addr").expect("--addr HOST:PORT of a running idlm serve");
    let sa: SocketAddr = addr.parse().expect("--addr is an IP:PORT");
    // Loopback only: this sends thousands of requests.
    assert!(
        match sa.ip() {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback(),
        },
        "--addr must be a loopback address"
    );
    let pid: Option<u32> = arg(&args, "--pid").and_then(|p| p.parse().ok());
    let model = arg(&args, "--model").expect("--model NAME");
    let steps = num(&args, "--steps", 4);
    let clients = num(&args, "--clients", 64);
    let requests = num(&args, "--requests", 10_000);
    let serial = num(&args, "--serial", 500);
    let deadline = Instant::now() + Duration::from_secs(num(&args, "--max-seconds", 900) as u64);
    let mut body = json!({"model": model, "steps": steps, "n": 1});
    if let Some(t) = arg(&args, "--max-tokens") {
        body["max_tokens"] = json!(t.parse::<usize>().expect("--max-tokens N"));
    }
    // Resident memory idle, after a warm-up round (buffers sized for a full batch exist), and after
    // the whole run: growth past warm-up would be a leak.
    let rss_idle = rss_mib(pid);
    let warmup = run(&addr, clients, (clients * 4).min(requests), &body, deadline);
    eprintln!("warm-up: {warmup}");
    let rss_before = rss_mib(pid);
    let concurrent = run(&addr, clients, requests, &body, deadline);
    let rss_after = rss_mib(pid);
    eprintln!("concurrent: {concurrent}");
    let one_at_a_time = run(&addr, 1, serial, &body, deadline);
    eprintln!("one at a time: {one_at_a_time}");
    let mut out = json!({
        "command": args.join(" "), "model": model, "steps": steps,
        "rss_mib_idle": rss_idle, "rss_mib_before": rss_before, "rss_mib_after": rss_after,
        "concurrent": concurrent, "one_at_a_time": one_at_a_time,
    });
    if let Some(ar) = arg(&args, "--ar") {
        let n = num(&args, "--ar-requests", requests);
        let mut b = json!({"model": ar, "n": 1});
        if let Some(t) = body.get("max_tokens") {
            b["max_tokens"] = t.clone();
        }
        out["ar_concurrent"] = run(&addr, clients, n, &b, deadline);
        eprintln!("AR concurrent: {}", out["ar_concurrent"]);
        out["ar_one_at_a_time"] = run(&addr, 1, serial, &b, deadline);
        eprintln!("AR one at a time: {}", out["ar_one_at_a_time"]);
    }
    let text = serde_json::to_string_pretty(&out).expect("JSON");
    println!("{text}");
    if let Some(p) = arg(&args, "--out") {
        std::fs::write(&p, text + "\n").unwrap_or_else(|e| panic!("writing {p}: {e}"));
    }
}
