//! `kubectl gitdev logs NAME [-f] [--deployment ID]`: the build log, with the object's own token.
//!
//! The API serves the whole log on each call and only appends to it, so following is: poll the
//! deployment and its log, print what was not printed yet, stop once the deployment is terminal.

use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::context::api_error;
use super::{Context, Error};
use crate::api::DeploymentsApi;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The gitdeployment.
    pub name: String,
    /// Keep printing new lines until the deployment finishes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// A past deployment of the object (see `history`) instead of the current one.
    #[arg(long = "deployment", value_name = "ID")]
    pub deployment: Option<String>,
    /// Seconds between polls while following.
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub poll_seconds: f64,
}

/// What of `log` is new after `printed` bytes were printed. The log only grows; if it was
/// replaced instead (it does not start with what was printed), all of it is new.
pub fn unseen<'a>(log: &'a str, printed: &str) -> &'a str {
    match log.strip_prefix(printed) {
        Some(rest) => rest,
        None => log,
    }
}

pub async fn run(
    ctx: &Context,
    args: &LogsArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let obj = ctx.object(&args.name).await?;
    let id = match &args.deployment {
        Some(id) => id.clone(),
        None => obj
            .status
            .as_ref()
            .and_then(|s| s.deployment_id.clone())
            .ok_or_else(|| {
                Error::State(format!(
                    "gitdeployment {:?} has no deployment yet (see `kubectl gitdev why {}`)",
                    args.name, args.name
                ))
            })?,
    };
    let token = ctx.token_of(&obj).await?;
    let api = ctx.api()?;
    let mut printed = String::new();
    loop {
        // The status is read before the log: a log read after the deployment was seen
        // terminal is complete, so the last round misses no line.
        let terminal = if args.follow {
            api.get(&token, &id)
                .await
                .map_err(|e| api_error(&id, e))?
                .status
                .is_terminal()
        } else {
            true
        };
        let log = api.logs(&token, &id).await.map_err(|e| api_error(&id, e))?;
        let new = unseen(&log, &printed);
        out.write_all(new.as_bytes())?;
        out.flush()?;
        printed = log;
        if terminal {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(args.poll_seconds.clamp(0.1, 60.0))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lines_not_printed_yet_are_new() {
        assert_eq!(unseen("a\nb\nc\n", "a\nb\n"), "c\n");
        assert_eq!(unseen("a\n", ""), "a\n");
        assert_eq!(unseen("x\n", "a\n"), "x\n");
    }
}
