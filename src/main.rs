//! The `idlm` binary.

mod cli;

use clap::Parser;

fn main() {
    idlm::runtime::tune_malloc();
    let args = cli::Cli::parse();
    if let Err(e) = idlm::runtime::set_threads(args.threads) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = idlm::runtime::set_device(&args.device) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = cli::dispatch(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
