//! A small HTTP/1.1 client over plain TCP for the server tests and the load test: full control of
//! what goes on the wire (malformed bodies, half-closed connections), no client library.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code (0 when no response came).
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a Server-Sent Events body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|ev| {
                let d: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|l| l.strip_prefix(' ').unwrap_or(l))
                    .collect();
                (!d.is_empty()).then(|| d.join("\n"))
            })
            .collect()
    }
}

/// Connect with generous timeouts (a stuck server fails the test instead of hanging it).
pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

/// The request head for `method path` with a body of `len` bytes.
pub fn head(method: &str, path: &str, len: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Send `method path` with `body` and read the whole response.
pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    let mut s = connect(addr);
    let mut bytes = head(method, path, body.len()).into_bytes();
    bytes.extend_from_slice(body);
    if bytes.len() <= 1 << 16 {
        let _ = s.write_all(&bytes);
        return read_response(&mut s);
    }
    // A large body is written beside the read: the server may answer (and close) before it has
    // read a body it refuses.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let r = read_response(&mut s);
    let _ = s.shutdown(Shutdown::Both);
    let _ = writer.join();
    r
}

/// GET `path`.
pub fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, b"")
}

/// POST a JSON body to `path`.
pub fn post(addr: &str, path: &str, body: &serde_json::Value) -> Resp {
    request(addr, "POST", path, body.to_string().as_bytes())
}

/// Read a response until the connection closes or its body is complete; a read error ends it
/// (a server that refuses a body may reset the connection after answering).
pub fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(r) = parse(&buf, false) {
            return r;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse(&buf, true).unwrap_or(Resp {
        status: 0,
        headers: Vec::new(),
        body: buf,
    })
}

/// Half-close after sending, then read what comes back.
pub fn send_and_half_close(addr: &str, bytes: &[u8]) -> Resp {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    read_response(&mut s)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse a response; None while it is incomplete (unless `eof`).
pub fn parse(buf: &[u8], eof: bool) -> Option<Resp> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let hv = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(n) = hv("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < n && !eof {
            return None;
        }
        rest[..n.min(rest.len())].to_vec()
    } else if hv("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        match dechunk(rest) {
            Some(b) => b,
            None if eof => rest.to_vec(),
            None => return None,
        }
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// The body of a complete chunked encoding, None if the last chunk has not arrived.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let e = find(b, b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..e]).trim(), 16).ok()?;
        b = &b[e + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
