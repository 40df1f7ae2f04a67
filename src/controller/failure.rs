//! Why a deployment failed, on the object: the last meaningful lines of its build log, read
//! once per failed deployment, with the values the operator injected from Secrets masked.
//!
//! The pure half (`excerpt`, `secret_values`, `fit`) turns a log into those lines; the IO half
//! (`Round::build_log`) reads the log at most once per deployment: `status.failure` records
//! for which deployment it was read, so that neither a later reconcile nor a restarted
//! operator reads it again.

use super::decision::{Observed, Recheck, cut};
use super::desired::DesiredDeployment;
use super::round::Round;
use crate::api::{ApiToken, DeploymentStatus, DeploymentsApi};
use crate::resource::DeploymentFailure;

/// How many log lines the excerpt keeps: enough for an error and what led to it.
pub const EXCERPT_LINES: usize = 10;
/// The longest line kept, in characters: a minified bundle or a dumped JSON is one long line.
pub const LINE_LIMIT: usize = 200;
/// The longest excerpt, in characters: it fits a condition message with room for the rest.
pub const EXCERPT_LIMIT: usize = 1_500;
/// Secret values shorter than this are not masked: masking `1` or `on` would blank the log
/// without protecting anything worth protecting.
pub const MIN_SECRET_LEN: usize = 4;
/// What a masked value is replaced with.
pub const MASK: &str = "***";
/// How much of the end of a log is looked at: the cause of a failure is near its end, and a
/// log may be megabytes long.
const TAIL_BYTES: usize = 64 * 1024;

/// What this reconcile knows of the build log of the tracked deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildLog {
    /// Not read: the deployment did not fail, or was not looked at.
    NotRead,
    /// The excerpt of the log of a failed deployment (read now or by an earlier reconcile).
    Excerpt(String),
    /// Reading it failed, with why (masked and cut); it is read again later.
    Unreadable(String),
}

impl BuildLog {
    /// A log that could not be read is read again at the cadence of existence checks: not in
    /// a hot loop, not never. Otherwise the decision stands.
    pub fn recheck(&self, decided: Recheck) -> Recheck {
        match (self, decided) {
            (BuildLog::Unreadable(_), Recheck::OnChange) => Recheck::Existence,
            _ => decided,
        }
    }
}

/// The values that came from `envFrom` Secrets, to mask: every resolved value that is not the
/// one `spec.envVars` shows anyway. Values too short to matter are left out, and a multi-line
/// value is masked line by line, as a log prints it.
pub fn secret_values(desired: &DesiredDeployment) -> Vec<String> {
    let mut values: Vec<String> = desired
        .env
        .iter()
        .filter(|(name, value)| desired.visible_env.get(*name) != Some(*value))
        .flat_map(|(_, value)| {
            std::iter::once(value.as_str())
                .chain(value.lines().map(str::trim))
                .filter(|v| v.chars().count() >= MIN_SECRET_LEN)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    // Longest first: a value that contains another is masked whole, not around the other.
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    values
}

/// `text` with every occurrence of any of `secrets` (longest first, see `secret_values`)
/// replaced by `***`.
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// The excerpt of a build log: the last `EXCERPT_LINES` meaningful lines up to the last line
/// that reports an error (the failing step; what follows it is usually cleanup), or the last
/// lines of the log when none does. Every line is masked before it is cut, so that no part of
/// a secret survives a cut, then cut to `LINE_LIMIT`; lines are dropped from the front until
/// the whole fits `EXCERPT_LIMIT`.
pub fn excerpt(log: &str, secrets: &[String]) -> String {
    let lines: Vec<String> = tail(log, TAIL_BYTES)
        .lines()
        .map(clean)
        .filter(|l| !is_noise(l))
        .collect();
    let end = lines
        .iter()
        .rposition(|l| reports_error(l))
        .map_or(lines.len(), |i| i + 1);
    let start = end.saturating_sub(EXCERPT_LINES);
    let kept: Vec<String> = lines[start..end]
        .iter()
        .map(|l| cut(&mask(l, secrets), LINE_LIMIT))
        .collect();
    fit(&kept.join("\n"), EXCERPT_LIMIT)
}

/// `text` in at most `max` characters: whole lines are dropped from the front (the end of a
/// log says the most), and a single line still too long is cut.
pub fn fit(text: &str, max: usize) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let len = |ls: &[&str]| ls.iter().map(|l| l.chars().count() + 1).sum::<usize>();
    while lines.len() > 1 && len(&lines) > max + 1 {
        lines.remove(0);
    }
    cut(&lines.join("\n"), max)
}

/// A message for an event note of at most `max` bytes: its first line (what happened) and as
/// many of its last lines as fit (a log excerpt ends with the cause). The API server refuses a
/// longer note, and a plain cut would drop the log's last lines.
pub fn fit_note(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut lines = message.lines();
    let head = cut_bytes(lines.next().unwrap_or_default(), max);
    let rest: Vec<&str> = lines.collect();
    let mut budget = max.saturating_sub(head.len() + "\n…".len());
    let mut kept = Vec::new();
    for line in rest.iter().rev() {
        if line.len() + 1 > budget {
            break;
        }
        budget -= line.len() + 1;
        kept.push(*line);
    }
    if kept.is_empty() {
        return head;
    }
    kept.reverse();
    format!("{head}\n…\n{}", kept.join("\n"))
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut_bytes(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The last `max` bytes of `log`, from the start of a line.
fn tail(log: &str, max: usize) -> &str {
    if log.len() <= max {
        return log;
    }
    let mut start = log.len() - max;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    let rest = &log[start..];
    // The first line is likely cut in the middle.
    rest.split_once('\n').map_or(rest, |(_, after)| after)
}

/// A log line as a terminal would show it: what a carriage return overwrote is gone, colour
/// codes and other control characters too.
fn clean(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    let shown = line.rsplit('\r').next().unwrap_or(line);
    let mut out = String::with_capacity(shown.len());
    let mut chars = shown.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// Blank lines, decoration (no letter or digit at all) and progress bars say nothing of why a
/// build failed.
fn is_noise(line: &str) -> bool {
    if !line.chars().any(char::is_alphanumeric) {
        return true;
    }
    if reports_error(line) {
        return false;
    }
    let percent = line
        .char_indices()
        .any(|(i, c)| c == '%' && line[..i].ends_with(|p: char| p.is_ascii_digit()));
    let bar = ["===", "###", "███", "━━━", "▓▓▓", "░░░", "...."]
        .iter()
        .any(|b| line.contains(b));
    let lower = line.to_lowercase();
    let transfer = [
        "downloading",
        "uploading",
        "fetching",
        "receiving objects",
        "resolving deltas",
        "counting objects",
        "compressing objects",
        "extracting",
        "progress",
    ]
    .iter()
    .any(|w| lower.contains(w));
    percent && (bar || transfer)
}

/// Whether a line reports an error: where the failing step's output ends.
fn reports_error(line: &str) -> bool {
    let lower = line.to_lowercase();
    [
        "error",
        "fail",
        "fatal",
        "panic",
        "exception",
        "traceback",
        "err!",
        "exit code",
        "exited with",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

impl<A: DeploymentsApi> Round<'_, A> {
    /// What the build log of the tracked deployment says, if it failed. Read at most once per
    /// deployment: when `status.failure` already holds this deployment's excerpt, that is it.
    /// A log read now is kept in `self.failure`, for the status and for the event that tells
    /// it; a failed read is said in the message and tried again later (`BuildLog::recheck`).
    pub async fn build_log(
        &mut self,
        token: &ApiToken,
        observed: &Observed,
        desired: &DesiredDeployment,
    ) -> BuildLog {
        let Observed::Found(d) = observed else {
            return BuildLog::NotRead;
        };
        if d.status != DeploymentStatus::Failed {
            return BuildLog::NotRead;
        }
        let stored = self.obj.status.as_ref().and_then(|s| s.failure.as_ref());
        if let Some(f) = stored.filter(|f| f.deployment_id == d.id) {
            return BuildLog::Excerpt(f.excerpt.clone());
        }
        let secrets = secret_values(desired);
        match self.ctx.api.logs(token, &d.id).await {
            Ok(log) => {
                let text = excerpt(&log, &secrets);
                tracing::info!(object = %self.name(), namespace = %self.namespace, deployment = %d.id, "read the build log of a failed deployment");
                self.failure = Some(DeploymentFailure {
                    deployment_id: d.id.clone(),
                    excerpt: text.clone(),
                });
                BuildLog::Excerpt(text)
            }
            Err(err) => {
                self.ctx.metrics.api_failure(err.category());
                tracing::info!(object = %self.name(), namespace = %self.namespace, deployment = %d.id, error = %err, "the build log of a failed deployment could not be read; it is read again later");
                BuildLog::Unreadable(cut(&mask(&err.to_string(), &secrets), 300))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn secrets(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_excerpt_keeps_the_last_meaningful_lines_up_to_the_last_error() {
        let numbered = |n: usize| {
            (1..=n)
                .map(|i| format!("step {i}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let rows: Vec<(&str, String, String)> = vec![
            ("empty log", String::new(), String::new()),
            ("a short log is kept whole", "a\nb\n".into(), "a\nb".into()),
            (
                "only the last ten lines",
                numbered(25),
                (16..=25)
                    .map(|i| format!("step {i}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            (
                "blank lines and decoration are skipped",
                "start\n\n   \n------\n=====\nError: boom\n".into(),
                "start\nError: boom".into(),
            ),
            (
                "progress bars are skipped",
                "Downloading deps [=====>    ] 45%\nReceiving objects:  87% (87/100)\nbuild\nerror: x".into(),
                "build\nerror: x".into(),
            ),
            (
                "a percentage that is the cause is kept",
                "coverage 45% is below 80%\nexit code 1".into(),
                "coverage 45% is below 80%\nexit code 1".into(),
            ),
            (
                "cleanup after the last error is left out",
                "compile\nERR! missing module\ncleaning up\nuploading cache".into(),
                "compile\nERR! missing module".into(),
            ),
            (
                "colours and carriage returns are shown as a terminal would",
                "\u{1b}[31merror\u{1b}[0m: red\nspin 1\rspin 2\rdone\r\n".into(),
                "error: red".into(),
            ),
        ];
        for (what, log, want) in rows {
            assert_eq!(excerpt(&log, &[]), want, "{what}");
        }
    }

    #[test]
    fn lines_and_the_whole_excerpt_are_cut() {
        let long = "x".repeat(1_000);
        let one = excerpt(&format!("{long}\nerror"), &[]);
        let first = one.lines().next().unwrap();
        assert_eq!(
            first.chars().count(),
            LINE_LIMIT + 1,
            "cut, with an ellipsis"
        );
        assert!(first.ends_with('…'));

        let many: String = (0..10)
            .map(|i| format!("{i}{}\n", "y".repeat(190)))
            .collect();
        let e = excerpt(&many, &[]);
        assert!(e.chars().count() <= EXCERPT_LIMIT, "{}", e.len());
        assert!(
            e.ends_with(&format!("9{}", "y".repeat(190))),
            "the last line survives"
        );
        assert!(!e.starts_with('0'), "the first lines go");
    }

    #[test]
    fn secret_values_are_masked_before_a_line_is_cut() {
        let secret = "s3cr3t-".repeat(10);
        let line = format!("{}DB_PASSWORD={secret}", "z".repeat(LINE_LIMIT - 20));
        let e = excerpt(&format!("{line}\nerror"), &secrets(&[&secret]));
        assert!(!e.contains("s3cr3t"), "no part of it survives the cut: {e}");

        let rows = [
            (
                "every occurrence",
                "a=hunter2 b=hunter2",
                vec!["hunter2"],
                "a=*** b=***",
            ),
            (
                "longest first",
                "k=abcdefgh",
                vec!["abcdefgh", "abcd"],
                "k=***",
            ),
            ("nothing to mask", "plain", vec!["hunter2"], "plain"),
        ];
        for (what, text, values, want) in rows {
            let mut values = secrets(&values);
            values.sort_by_key(|v| std::cmp::Reverse(v.len()));
            assert_eq!(mask(text, &values), want, "{what}");
        }
    }

    #[test]
    fn only_values_from_env_from_secrets_of_a_few_characters_are_masked() {
        let env: BTreeMap<String, String> = [
            ("API_KEY", "sk_live_abc"),
            ("DEBUG", "1"),
            ("NODE_ENV", "production"),
            ("OVERRIDDEN", "from-spec"),
            ("PEM", "-----BEGIN KEY-----\nMIIEabc\n-----END KEY-----"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let visible: BTreeMap<String, String> =
            [("NODE_ENV", "production"), ("OVERRIDDEN", "from-spec")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let desired = DesiredDeployment {
            target: crate::controller::desired::Target {
                project_id: "proj_a".into(),
                branch: "main".into(),
                commit_sha: None,
            },
            env,
            redeploy: None,
            visible_env: visible,
            env_sources: Vec::new(),
        };
        let values = secret_values(&desired);
        assert_eq!(
            values,
            [
                "-----BEGIN KEY-----\nMIIEabc\n-----END KEY-----",
                "-----BEGIN KEY-----",
                "-----END KEY-----",
                "sk_live_abc",
                "MIIEabc",
            ]
        );
        let log = "API_KEY=sk_live_abc DEBUG=1 NODE_ENV=production\nMIIEabc";
        assert_eq!(
            mask(log, &values),
            "API_KEY=*** DEBUG=1 NODE_ENV=production\n***"
        );
    }

    #[test]
    fn a_note_keeps_its_first_line_and_as_many_last_lines_as_fit() {
        assert_eq!(fit_note("short\nnote", 100), "short\nnote");
        let message = format!(
            "deployment d failed\n{}\nerror: the cause",
            (0..50)
                .map(|i| format!("line {i}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let note = fit_note(&message, 100);
        assert!(note.len() <= 100, "{}", note.len());
        assert!(note.starts_with("deployment d failed\n…\n"), "{note}");
        assert!(note.ends_with("error: the cause"), "{note}");
        let wide = "é".repeat(600);
        let note = fit_note(&wide, 1000);
        assert!(note.len() <= 1000 && note.chars().all(|c| c == 'é'));
    }

    #[test]
    fn an_unreadable_log_is_read_again_at_the_existence_cadence() {
        let unreadable = BuildLog::Unreadable("503".into());
        assert_eq!(unreadable.recheck(Recheck::OnChange), Recheck::Existence);
        let read = BuildLog::Excerpt("x".into());
        assert_eq!(read.recheck(Recheck::OnChange), Recheck::OnChange);
        assert_eq!(
            BuildLog::NotRead.recheck(Recheck::OnChange),
            Recheck::OnChange
        );
    }
}
