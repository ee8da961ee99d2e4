//! The page of `idlm serve` in a real browser: Debian's headless `chromium` driven by
//! tests/browser/page.cjs through playwright-core from npm (both installed by .ci/run): a prompt is
//! kept in the sample and one too long is refused on the page, then the sample resolves over at
//! least 3 steps to the API's text, the side-by-side view runs, and a screenshot is saved
//! (target/serve-page.png).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::server::{Server, fixture};

#[test]
#[ignore = "needs chromium: run by .ci/run"]
fn the_page_shows_the_sample_resolve_step_by_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mdlm, _) = fixture(dir);
    let m = format!("teacher={}", mdlm.display());
    let s = Server::start(dir, &["--ckpt", &m]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = std::env::var_os("IDLM_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/browser/node_modules"));
    assert!(
        modules.join("playwright-core").is_dir(),
        "playwright-core is not in {} (npm install --prefix target/browser playwright-core)",
        modules.display()
    );
    let shot = root.join("target/serve-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(root.join("tests/browser/page.cjs"))
        .arg(&s.addr)
        .arg(&shot)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "no screenshot at {}",
        shot.display()
    );
}
