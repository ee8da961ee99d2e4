//! `idlm serve`: glue between arguments and `idlm::serve`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use idlm::serve::{Limits, ModelSpec, ServeOptions, serve};

/// `idlm serve`
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Checkpoint to serve, as `PATH` or `NAME=PATH` (repeatable: the first is the default model;
    /// unnamed ones take their directory's name). Any checkpoint `idlm sample` reads.
    #[arg(long, required = true)]
    pub ckpt: Vec<String>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Most sequences per network call (diffusion models).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Most requests admitted at once (sampling or waiting); past it, 429.
    #[arg(long, default_value_t = Limits::default().queue)]
    pub queue: usize,
    /// Most tokens per sequence (`max_tokens`; never more than the model's length).
    #[arg(long, default_value_t = Limits::default().max_tokens)]
    pub max_tokens: usize,
    /// Most reverse steps per request.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    pub max_steps: usize,
    /// Most sequences per request (`n`).
    #[arg(long, default_value_t = Limits::default().max_n)]
    pub max_n: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = Limits::default().max_body)]
    pub max_body: usize,
    /// Seconds a client has to send its request body.
    #[arg(long, default_value_t = Limits::default().body_timeout.as_secs_f64())]
    pub body_timeout: f64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub raw: bool,
    /// Nucleus mass of Duo models (fixed for the server) and the default of AR models.
    #[arg(long)]
    pub top_p: Option<f64>,
}

fn spec(arg: &str, a: &ServeArgs) -> Result<ModelSpec> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(arg);
            let name = p
                .canonicalize()
                .unwrap_or_else(|_| p.clone())
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            (name, p)
        }
    };
    Ok(ModelSpec {
        name,
        path,
        raw: a.raw,
        top_p: a.top_p,
        batch_size: a.batch_size,
    })
}

/// Serve until Ctrl-C or SIGTERM.
pub fn serve_cmd(a: ServeArgs) -> Result<()> {
    if !(a.body_timeout.is_finite() && a.body_timeout > 0.0) {
        bail!("--body-timeout must be a positive number of seconds");
    }
    if a.batch_size == 0 || a.max_n == 0 || a.max_steps == 0 || a.max_tokens == 0 {
        bail!("--batch-size, --max-n, --max-steps and --max-tokens must be at least 1");
    }
    let models = a
        .ckpt
        .iter()
        .map(|c| spec(c, &a))
        .collect::<Result<Vec<_>>>()?;
    let limits = Limits {
        max_tokens: a.max_tokens,
        max_steps: a.max_steps,
        max_n: a.max_n,
        max_body: a.max_body,
        body_timeout: Duration::from_secs_f64(a.body_timeout),
        queue: a.queue,
        ..Limits::default()
    };
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let opts = ServeOptions {
        models,
        addr: a.addr.clone(),
        limits,
    };
    serve(opts, |addr| {
        // Tests and scripts read this line for the port.
        println!("listening on http://{addr} (models: {})", names.join(", "));
        let _ = std::io::stdout().flush();
    })?;
    eprintln!("idlm serve: stopped");
    Ok(())
}
