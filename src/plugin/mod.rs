//! `kubectl gitdev`: the kubectl plugin (binary `kubectl-gitdev`). It acts with the user's own
//! kubeconfig and RBAC, never the operator's: every read and write here is one the user could
//! make by hand with kubectl, so the plugin can never do more than its user may.
//!
//! One file per subcommand; this file holds the command line, the errors and their exit codes,
//! and the connection to the cluster and to the Deployments API. User documentation:
//! `docs/kubectl-plugin.md`.

mod adopt;
pub mod complete;
mod context;
mod error;
mod history;
mod logs;
mod output;
mod spec;
mod why;

use std::io::Write;

use clap::{Args, CommandFactory, Parser, Subcommand};

pub use context::Context;
pub use error::{EXIT_ERROR, EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, Error};
pub use output::Output;

/// Where the Deployments API is, unless `--api-url` or `GITDEV_API_URL` says otherwise.
pub const DEFAULT_API_URL: &str = crate::api::client::DEFAULT_BASE_URL;
/// The field manager of the plugin's server-side applies: the user's edits, told apart from
/// a GitOps tool's and the operator's in `managedFields`.
pub const FIELD_MANAGER: &str = "kubectl-gitdev";

/// kubectl gitdev: logs, history and diagnosis of git.dev deployments (`gitdeployments.git.dev`).
#[derive(Debug, Parser)]
#[command(name = "kubectl-gitdev", bin_name = "kubectl-gitdev", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags kubectl users expect, with kubectl's names.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Namespace of the object (default: the kubeconfig context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Base URL of the git.dev Deployments API.
    #[arg(long, global = true, env = "GITDEV_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The build log of the current (or a past) deployment.
    Logs(logs::LogsArgs),
    /// The object's deployments, newest first: status, commit, age, URL.
    History(history::HistoryArgs),
    /// Why the object is in its state: conditions, recent events, failure excerpt, next step.
    Why(why::WhyArgs),
    /// Deploy the unchanged spec again (sets `spec.redeploy`).
    Redeploy(spec::NameArg),
    /// Cancel the current deployment and hold off new ones (sets `spec.cancel: true`).
    Cancel(spec::NameArg),
    /// Allow deployments again after a cancel (sets `spec.cancel: false`).
    Resume(spec::NameArg),
    /// Remote deployments that no object tracks, as manifests that adopt them.
    Adopt(adopt::AdoptArgs),
    /// A shell completion script: `source <(kubectl-gitdev completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs one command line, writing results to `out`; the caller maps an error to its exit code.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "kubectl-gitdev", out);
        return Ok(());
    }
    let ctx = Context::connect(&cli.global).await?;
    match cli.command {
        Command::Logs(args) => logs::run(&ctx, &args, out).await,
        Command::History(args) => history::run(&ctx, &args, out).await,
        Command::Why(args) => why::run(&ctx, &args, out).await,
        Command::Redeploy(args) => spec::redeploy(&ctx, &args, out).await,
        Command::Cancel(args) => spec::set_cancel(&ctx, &args, true, out).await,
        Command::Resume(args) => spec::set_cancel(&ctx, &args, false, out).await,
        Command::Adopt(args) => adopt::run(&ctx, &args, out).await,
        Command::Completion { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn namespace_and_output_parse_like_kubectl() {
        let cli = Cli::try_parse_from([
            "kubectl-gitdev",
            "history",
            "web",
            "-n",
            "apps",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("apps"));
        match cli.command {
            Command::History(a) => assert_eq!(a.output.output, Output::Json),
            other => panic!("parsed as {other:?}"),
        }
    }
}
