//! `kubectl-gitdev`: the kubectl plugin. Thin on purpose: parsing, then `gitdev::plugin::run`;
//! an error goes to stderr and becomes the exit code scripts rely on (docs/kubectl-plugin.md).

use std::process::ExitCode;

use clap::Parser;
use gitdev::plugin::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2; --help and --version exit 0.
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
