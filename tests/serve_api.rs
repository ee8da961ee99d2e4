//! `idlm serve` end to end on tiny checkpoints (an MDLM teacher and the AR baseline): status codes,
//! JSON shapes, the order of streamed events, the same text streamed or not and as `idlm sample`
//! writes it; bad input refused by name while the server keeps serving; the bounded queue (429),
//! a disconnected client's slot freed, and SIGTERM draining a running request.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::http::{self, Resp, get, post};
use common::server::{LEN, Server, fixture};
use serde_json::{Value, json};

fn completions(s: &Server, body: Value) -> Resp {
    post(&s.addr, "/v1/completions", &body)
}

/// The streamed events: JSON step events, the final completion, and whether `[DONE]` came last.
fn events(r: &Resp) -> (Vec<Value>, Value) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let json: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let (last, steps) = json.split_last().unwrap();
    assert_eq!(last["object"], "text_completion", "{last}");
    for s in steps {
        assert_eq!(s["object"], "text_completion.step", "{s}");
    }
    (steps.to_vec(), last.clone())
}

/// `idlm sample` of the same request: the texts and ids.
fn cli_samples(dir: &Path, ckpt: &Path, extra: &[&str]) -> Vec<(String, Vec<u64>)> {
    let mut args = vec![
        "sample",
        "--ckpt",
        ckpt.to_str().unwrap(),
        "-n",
        "2",
        "--seed",
        "3",
        "--len",
        "32",
    ];
    args.extend_from_slice(extra);
    let out = common::ok(&common::idlm(&args, dir));
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["text"].as_str().unwrap().to_string(), ids(&v["ids"]))
        })
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn texts_and_ids(completion: &Value) -> Vec<(String, Vec<u64>)> {
    completion["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                ids(&c["token_ids"]),
            )
        })
        .collect()
}

/// Per choice, the step events are numbered 1, 2, ... with one per network call, masks only
/// resolve, and the last event shows the final text.
fn check_steps(steps: &[Value], done: &Value, masked_only_shrinks: bool) {
    for c in done["choices"].as_array().unwrap() {
        let i = c["index"].as_u64().unwrap();
        let mine: Vec<&Value> = steps
            .iter()
            .map(|s| &s["choices"][0])
            .filter(|s| s["index"] == i)
            .collect();
        assert!(mine.len() >= 3, "choice {i}: {} steps", mine.len());
        let mut masked = LEN + 1;
        for (k, s) in mine.iter().enumerate() {
            assert_eq!(s["step"].as_u64().unwrap(), k as u64 + 1, "{s}");
            let m = s["masked"].as_array().unwrap().len();
            if masked_only_shrinks {
                assert!(m <= masked, "masked grew: {s}");
            }
            masked = m;
            assert!(
                !s["revealed"].as_array().unwrap().is_empty() || k > 0,
                "{s}"
            );
        }
        let last = mine.last().unwrap();
        assert_eq!(last["nfe"], c["nfe"], "one event per network call");
        assert_eq!(last["text"], c["text"]);
        assert!(last["masked"].as_array().unwrap().is_empty(), "{last}");
    }
}

#[test]
fn completions_whole_and_streamed_match_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mdlm, ar) = fixture(dir);
    let m = format!("teacher={}", mdlm.display());
    let a = format!("ar={}", ar.display());
    let s = Server::start(dir, &["--ckpt", &m, "--ckpt", &a]);

    let h = get(&s.addr, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let models = get(&s.addr, "/v1/models").json();
    assert_eq!(models["object"], "list");
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["teacher", "ar"]);
    assert_eq!(models["data"][0]["process"], "mdlm");
    assert_eq!(models["data"][0]["length"], LEN);
    assert_eq!(models["data"][1]["process"], "ar");

    // Diffusion: whole, streamed, and the CLI agree for the same seed and steps.
    let req = json!({"prompt": "", "max_tokens": LEN, "n": 2, "seed": 3, "steps": 8});
    let whole = completions(&s, req.clone());
    assert_eq!(whole.status, 200, "{}", whole.text());
    let w = whole.json();
    assert_eq!(w["object"], "text_completion");
    assert_eq!(w["model"], "teacher");
    assert!(w["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(w["choices"].as_array().unwrap().len(), 2);
    let u = &w["usage"];
    assert_eq!(u["completion_tokens"], 2 * LEN);
    assert_eq!(u["steps"], 8);
    let nfe: u64 = w["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["nfe"].as_u64().unwrap())
        .sum();
    assert!(nfe >= 2 && u["nfe"] == nfe, "{u}");
    assert!(u["seconds"].as_f64().unwrap() > 0.0);
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (steps, done) = events(&completions(&s, sreq));
    check_steps(&steps, &done, true);
    assert_eq!(texts_and_ids(&done), texts_and_ids(&w));
    let cli = cli_samples(dir, &mdlm, &["--steps", "8"]);
    assert_eq!(texts_and_ids(&w), cli);
    // Another seed gives other text (the comparison above is not vacuous).
    let other = completions(&s, json!({"n": 2, "seed": 4, "steps": 8})).json();
    assert_ne!(texts_and_ids(&other), cli);

    // The AR baseline, served the same way.
    let areq = json!({"model": "ar", "max_tokens": LEN, "n": 2, "seed": 3});
    let aw = completions(&s, areq.clone());
    assert_eq!(aw.status, 200, "{}", aw.text());
    let aw = aw.json();
    assert_eq!(aw["usage"]["nfe"], 2 * (LEN - 1));
    let mut asreq = areq;
    asreq["stream"] = json!(true);
    let (asteps, adone) = events(&completions(&s, asreq));
    check_steps(&asteps, &adone, true);
    assert_eq!(asteps.len(), 2 * (LEN - 1));
    assert_eq!(texts_and_ids(&adone), texts_and_ids(&aw));
    assert_eq!(texts_and_ids(&aw), cli_samples(dir, &ar, &[]));

    // The page, metrics, and an unknown route.
    let page = get(&s.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>idlm serve</title>"));
    let metrics = get(&s.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    let mt = metrics.text();
    assert!(mt.contains("idlm_requests_total{code=\"200\"} 5"), "{mt}");
    assert!(mt.contains("idlm_request_duration_seconds_count 5"), "{mt}");
    assert!(mt.contains("idlm_queue_depth 0"), "{mt}");
    let nf = get(&s.addr, "/nope");
    assert_eq!(nf.status, 404);
    assert!(nf.json()["error"]["message"].is_string());

    // A prompt: clamped in every sequence, whole and streamed equal to `idlm sample --prompt`,
    // for both models; the completion is the text after it.
    for (model, ckpt, extra) in [
        ("teacher", &mdlm, vec!["--steps", "8"]),
        ("ar", &ar, vec![]),
    ] {
        let mut preq = json!({"model": model, "prompt": "the whale and", "n": 2, "seed": 3});
        if model == "teacher" {
            preq["steps"] = json!(8);
        }
        let pw = completions(&s, preq.clone());
        assert_eq!(pw.status, 200, "{}", pw.text());
        let pw = pw.json();
        let mut args = extra.clone();
        args.extend(["--prompt", "the whale and"]);
        let cli = cli_samples(dir, ckpt, &args);
        assert_eq!(texts_and_ids(&pw), cli, "{model}");
        let p = pw["usage"]["prompt_tokens"].as_u64().unwrap() as usize / 2;
        assert!(p >= 3, "{}", pw["usage"]);
        for (c, (_, ids)) in pw["choices"].as_array().unwrap().iter().zip(&cli) {
            assert!(c["completion"].is_string(), "{c}");
            assert_eq!(ids.len(), LEN);
            assert_eq!(
                &ids[..p],
                &cli[0].1[..p],
                "{model}: the prompt is the same in each"
            );
        }
        preq["stream"] = json!(true);
        let (psteps, pdone) = events(&completions(&s, preq));
        assert_eq!(texts_and_ids(&pdone), cli, "{model} streamed");
        for st in &psteps {
            let t = st["choices"][0]["text"].as_str().unwrap();
            assert!(
                t.contains("the whale and"),
                "{model}: step without the prompt: {t}"
            );
        }
    }
    // Infilling with a suffix (diffusion): the suffix ends every row.
    let iw = completions(
        &s,
        json!({"prompt": "the", "suffix": " ship", "max_tokens": 4, "n": 2, "steps": 8}),
    );
    assert_eq!(iw.status, 200, "{}", iw.text());
    for c in iw.json()["choices"].as_array().unwrap() {
        assert!(c["text"].as_str().unwrap().ends_with(" ship"), "{c}");
        assert!(c["completion"].is_null(), "{c}");
    }
    drop(s);
}

/// Each bad body gets `status` and an error naming `param`.
fn refused(s: &Server, body: &[u8], status: u16, param: &str) {
    let r = http::request(&s.addr, "POST", "/v1/completions", body);
    assert_eq!(
        r.status,
        status,
        "{}: {}",
        String::from_utf8_lossy(&body[..body.len().min(200)]),
        r.text()
    );
    let e = r.json();
    assert_eq!(e["error"]["param"], param, "{e}");
    assert!(!e["error"]["message"].as_str().unwrap().is_empty());
}

#[test]
fn bad_input_is_refused_by_name_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mdlm, ar) = fixture(dir);
    let m = format!("teacher={}", mdlm.display());
    let a = format!("ar={}", ar.display());
    let s = Server::start(dir, &["--ckpt", &m, "--ckpt", &a, "--body-timeout", "0.5"]);
    let cases: &[(&str, u16, &str)] = &[
        ("{", 400, "body"),
        ("[1, 2]", 400, "body"),
        ("", 400, "body"),
        (r#"{"n": "2"}"#, 400, "n"),
        (r#"{"n": -1}"#, 400, "n"),
        (r#"{"n": 0}"#, 400, "n"),
        (r#"{"n": 1e30}"#, 400, "n"),
        (r#"{"n": 100000}"#, 400, "n"),
        (r#"{"max_tokens": 0}"#, 400, "max_tokens"),
        (r#"{"max_tokens": 33}"#, 400, "max_tokens"),
        (r#"{"max_tokens": 18446744073709551616}"#, 400, "max_tokens"),
        (r#"{"steps": 100000000}"#, 400, "steps"),
        (r#"{"steps": 2.5}"#, 400, "steps"),
        (r#"{"steps": [4]}"#, 400, "steps"),
        (r#"{"seed": -5}"#, 400, "seed"),
        (r#"{"stream": "yes"}"#, 400, "stream"),
        (r#"{"bogus": 1}"#, 400, "bogus"),
        (r#"{"prompt": 5}"#, 400, "prompt"),
        (
            r#"{"prompt": "the whale", "max_tokens": 32}"#,
            400,
            "max_tokens",
        ),
        (
            r#"{"model": "ar", "prompt": "a", "suffix": "the end"}"#,
            400,
            "suffix",
        ),
        (r#"{"temperature": 0.5}"#, 400, "temperature"),
        (r#"{"top_p": 2}"#, 400, "top_p"),
        (r#"{"model": "nope"}"#, 400, "model"),
        (r#"{"model": 3}"#, 400, "model"),
        (r#"{"noise_removal": "x"}"#, 400, "noise_removal"),
        (r#"{"sampler": "kv_cache"}"#, 400, "sampler"),
        (r#"{"model": "ar", "steps": 4}"#, 400, "steps"),
        (r#"{"model": "ar", "temperature": -1}"#, 400, "temperature"),
    ];
    for (body, status, param) in cases {
        refused(&s, body.as_bytes(), *status, param);
    }
    refused(&s, b"{\"n\": \xff}", 400, "body");
    let long = format!(r#"{{"prompt": "{}"}}"#, "the whale ".repeat(40));
    refused(&s, long.as_bytes(), 400, "prompt");
    // A 10 MB body: refused by its declared length, whether or not it was all sent.
    let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(10 << 20));
    refused(&s, big.as_bytes(), 413, "body");
    // The same without a length (chunked): refused once it passes the limit.
    let mut c = http::connect(&s.addr);
    let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let _ = c.write_all(head.as_bytes());
    for _ in 0..160 {
        let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
        if c.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let r = http::read_response(&mut c);
    assert!(
        r.status == 413 || r.status == 0,
        "{} {}",
        r.status,
        r.text()
    );
    // A body that stops half-way and half-closes: a 4xx (or nothing), never a hang.
    let mut half = http::head("POST", "/v1/completions", 100).into_bytes();
    half.extend_from_slice(br#"{"n": 1"#);
    let r = http::send_and_half_close(&s.addr, &half);
    assert!(
        r.status == 400 || r.status == 0,
        "{} {}",
        r.status,
        r.text()
    );
    // A body that stops half-way and stays open: 408 once the body time is up.
    let mut slow = http::connect(&s.addr);
    slow.write_all(&half).unwrap();
    let r = http::read_response(&mut slow);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "body");
    // Wrong method, headers only, garbage instead of HTTP.
    assert_eq!(get(&s.addr, "/v1/completions").status, 405);
    let mut g = http::connect(&s.addr);
    g.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = g.read_to_end(&mut sink);
    // Still serving.
    assert_eq!(get(&s.addr, "/health").status, 200);
    let ok = completions(&s, json!({"n": 1, "steps": 4, "seed": 1}));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let mt = get(&s.addr, "/metrics").text();
    assert!(mt.contains("idlm_requests_total{code=\"400\"}"), "{mt}");
    assert!(mt.contains("idlm_requests_total{code=\"413\"}"), "{mt}");
    drop(s);
}

/// Read from a streamed response until its first step event.
fn until_first_step(c: &mut std::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("text_completion.step") {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before a step: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

fn open_stream(s: &Server, body: Value) -> std::net::TcpStream {
    let mut c = http::connect(&s.addr);
    let b = body.to_string();
    let mut bytes = http::head("POST", "/v1/completions", b.len()).into_bytes();
    bytes.extend_from_slice(b.as_bytes());
    c.write_all(&bytes).unwrap();
    c
}

fn queue_depth(s: &Server) -> u64 {
    get(&s.addr, "/health").json()["queue_depth"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_full_queue_says_429_a_gone_client_frees_its_slot_and_sigterm_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mdlm, _) = fixture(dir);
    let m = mdlm.display().to_string();
    let mut s = Server::start(dir, &["--ckpt", &m, "--queue", "1"]);
    // A long request (one call per step) holds the only slot...
    let long = json!({"stream": true, "n": 16, "steps": 4096, "sampler": "ancestral", "seed": 2});
    let mut a = open_stream(&s, long.clone());
    until_first_step(&mut a);
    // ...so another is refused with Retry-After.
    let r = completions(&s, json!({"n": 1, "steps": 4}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(queue_depth(&s), 1);
    // The client leaves: its slot is freed (polled, bounded) and the next request runs.
    drop(a);
    let mut freed = false;
    for _ in 0..600 {
        if queue_depth(&s) == 0 {
            freed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(freed, "the slot of a disconnected client was not freed");
    let r = completions(&s, json!({"n": 1, "steps": 4}));
    assert_eq!(r.status, 200, "{}", r.text());
    let mt = get(&s.addr, "/metrics").text();
    assert!(mt.contains("idlm_cancelled_total 1"), "{mt}");
    // SIGTERM while a request runs: it finishes, then the server exits cleanly.
    let drained = json!({"stream": true, "n": 2, "steps": 4096, "sampler": "ancestral", "seed": 5});
    let mut d = open_stream(&s, drained);
    until_first_step(&mut d);
    s.terminate();
    let mut rest = Vec::new();
    let _ = d.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest).into_owned();
    let tail: String = {
        let mut t: Vec<char> = text.chars().rev().take(300).collect();
        t.reverse();
        t.into_iter().collect()
    };
    assert!(
        tail.contains("data: [DONE]"),
        "the running request was cut: {tail}"
    );
    assert!(text.contains("\"object\":\"text_completion\""), "{tail}");
    let status = s.wait();
    assert!(status.success(), "exit {status:?}; log: {}", s.log());
}
