//! A running `idlm serve` for the server tests, and the tiny checkpoints it serves.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sequence length of the tiny models.
pub const LEN: usize = 32;

/// Train a tiny MDLM teacher and a tiny AR baseline on the same tiny data.
pub fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let data = super::tiny_data(dir, 300, LEN);
    let mdlm = dir.join("mdlm");
    super::train_tiny(&mdlm, &data, &["train.max_steps=6".into()]);
    let ar = dir.join("ar");
    super::train_tiny(
        &ar,
        &data,
        &["train.max_steps=6".into(), "train.process=\"ar\"".into()],
    );
    (mdlm, ar)
}

/// A running `idlm serve` on a free loopback port; killed if the test ends without stopping it.
pub struct Server {
    child: Option<Child>,
    /// host:port it listens on.
    pub addr: String,
    log: PathBuf,
}

impl Server {
    /// Start it on a free loopback port with `args` after `serve`.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!("serve-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_idlm"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "no address in {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        // Keep the pipe open (the server writes nothing more to it).
        std::mem::forget(out);
        Server {
            child: Some(child),
            addr,
            log,
        }
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let c = self.child.as_ref().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
    }

    /// Wait for the exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
