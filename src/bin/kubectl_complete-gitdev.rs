//! `kubectl_complete-gitdev`: what kubectl runs to complete `kubectl gitdev <TAB>`, with the
//! words typed after `kubectl gitdev` (the last one under completion). Logic and protocol in
//! `gitdev::plugin::complete`.

use std::io::Write;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Lossy: a word that is not UTF-8 cannot match a subcommand, flag or object name anyway.
    let words: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let text = gitdev::plugin::complete::run(&words).await;
    // Always 0: kubectl ignores the output of a completer that fails, so a failed write (the
    // shell gave up waiting) has no one to tell.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}
