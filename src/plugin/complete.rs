//! `kubectl_complete-gitdev`: completion of `kubectl gitdev …` for kubectl itself.
//!
//! kubectl (1.26 and later) completes a plugin's arguments by running the executable
//! `kubectl_complete-<plugin>` from `PATH` with the words typed after `kubectl gitdev`, the last
//! being the word under completion (possibly empty). It reads Cobra's protocol from stdout: one
//! candidate per line, `candidate\tdescription` allowed, then `:<directive>`. Only a zero exit
//! status is read at all, so this never fails: a problem means no candidates, not an error.
//!
//! Candidates come from the same `clap::Command` as the parser ([`Cli`]), so they cannot drift
//! from the flags; names of gitdeployments are listed with the user's kubeconfig and RBAC.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, CommandFactory, ValueHint};
use kube::api::ListParams;

use super::{Cli, Context, DEFAULT_API_URL, GlobalArgs};

/// Cobra's `ShellCompDirectiveDefault`: the shell may fall back to file names.
pub const DIRECTIVE_DEFAULT: u32 = 0;
/// Cobra's `ShellCompDirectiveNoFileComp`: no file names when nothing here matches.
pub const DIRECTIVE_NO_FILE_COMP: u32 = 4;

/// A completion is run on every TAB: an unreachable cluster must not hang the shell.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// The positional argument whose values are names of gitdeployments in the namespace.
const NAME_ARG: &str = "name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub value: String,
    pub description: Option<String>,
}

/// The connection flags typed before the word under completion: the names offered are those
/// the command would act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Typed {
    pub namespace: Option<String>,
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
}

/// What the word under completion can be, decided from the command line alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// These candidates; `files`: a path is expected, so the shell may offer file names.
    Candidates {
        candidates: Vec<Candidate>,
        files: bool,
    },
    /// The names of the gitdeployments (with the `typed` flags) that start with `prefix`.
    Names { typed: Typed, prefix: String },
}

impl Completion {
    fn none() -> Completion {
        Completion::Candidates {
            candidates: Vec::new(),
            files: false,
        }
    }
}

/// Decides what `words` (as kubectl passes them: the last is the word under completion)
/// complete to. Pure: no cluster is asked.
pub fn complete(words: &[String]) -> Completion {
    let mut root = Cli::command();
    // Propagates the global flags (-n, --kubeconfig, …) into every subcommand and adds --help,
    // so each subcommand lists what its parser accepts.
    root.build();
    let (partial, typed_words) = match words.split_last() {
        Some((last, before)) => (last.as_str(), before),
        None => ("", &[][..]),
    };

    let mut cmd = &root;
    let mut typed = Typed::default();
    let mut pending: Option<&Arg> = None;
    let mut positionals = 0usize;
    let mut only_positionals = false;
    for word in typed_words {
        if let Some(arg) = pending.take() {
            typed.record(arg, word);
            continue;
        }
        if !only_positionals && word == "--" {
            only_positionals = true;
        } else if !only_positionals && let Some(long) = word.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            if let Some(arg) = find_long(cmd, name).filter(|a| takes_value(a)) {
                match value {
                    Some(value) => typed.record(arg, value),
                    None => pending = Some(arg),
                }
            }
        } else if !only_positionals && word.len() > 1 && word.starts_with('-') {
            // Clustered short flags (`-fn apps`, `-napps`): the first that takes a value takes
            // the rest of the word, or else the next word.
            let shorts = &word[1..];
            for (i, c) in shorts.char_indices() {
                if let Some(arg) = find_short(cmd, c).filter(|a| takes_value(a)) {
                    let rest = &shorts[i + c.len_utf8()..];
                    let rest = rest.strip_prefix('=').unwrap_or(rest);
                    if rest.is_empty() {
                        pending = Some(arg);
                    } else {
                        typed.record(arg, rest);
                    }
                    break;
                }
            }
        } else if cmd.has_subcommands() {
            match cmd.find_subcommand(word) {
                Some(sub) => cmd = sub,
                // Not a command this plugin has: nothing sensible to offer after it.
                None => return Completion::none(),
            }
        } else {
            positionals += 1;
        }
    }

    if let Some(arg) = pending {
        return values_of(arg, "", partial);
    }
    if !only_positionals && partial.starts_with('-') {
        if let Some((name, value)) = partial
            .strip_prefix("--")
            .and_then(|long| long.split_once('='))
        {
            return match find_long(cmd, name).filter(|a| takes_value(a)) {
                Some(arg) => values_of(arg, &format!("--{name}="), value),
                None => Completion::none(),
            };
        }
        return flags_of(cmd, partial);
    }
    if cmd.has_subcommands() {
        let candidates = cmd
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set() && sub.get_name().starts_with(partial))
            .map(|sub| Candidate {
                value: sub.get_name().to_string(),
                description: sub.get_about().map(|about| one_line(&about.to_string())),
            })
            .collect();
        return Completion::Candidates {
            candidates,
            files: false,
        };
    }
    match cmd.get_positionals().nth(positionals) {
        Some(arg) if arg.get_id() == NAME_ARG => Completion::Names {
            typed,
            prefix: partial.to_string(),
        },
        Some(arg) => values_of(arg, "", partial),
        None => Completion::none(),
    }
}

impl Typed {
    fn record(&mut self, arg: &Arg, value: &str) {
        let slot = match arg.get_id().as_str() {
            "namespace" => &mut self.namespace,
            "kubeconfig" => &mut self.kubeconfig,
            "context" => &mut self.context,
            _ => return,
        };
        *slot = Some(value.to_string());
    }
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

fn find_long<'a>(cmd: &'a clap::Command, name: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(name)
            || a.get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&name))
    })
}

fn find_short(cmd: &clap::Command, c: char) -> Option<&Arg> {
    cmd.get_arguments().find(|a| a.get_short() == Some(c))
}

/// The values `arg` accepts that start with `partial`, each written after `prefix`.
fn values_of(arg: &Arg, prefix: &str, partial: &str) -> Completion {
    if matches!(
        arg.get_value_hint(),
        ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
    ) {
        // A path (`--kubeconfig`): the shell's own file-name completion is the right answer.
        return Completion::Candidates {
            candidates: Vec::new(),
            files: true,
        };
    }
    let candidates = arg
        .get_possible_values()
        .into_iter()
        .filter(|v| !v.is_hide_set() && v.get_name().starts_with(partial))
        .map(|v| Candidate {
            value: format!("{prefix}{}", v.get_name()),
            description: v.get_help().map(|help| one_line(&help.to_string())),
        })
        .collect();
    Completion::Candidates {
        candidates,
        files: false,
    }
}

/// The visible flags of `cmd`, long and short, that start with `partial`.
fn flags_of(cmd: &clap::Command, partial: &str) -> Completion {
    let mut candidates = Vec::new();
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
    {
        let description = arg.get_help().map(|help| one_line(&help.to_string()));
        let long = arg.get_long().map(|l| format!("--{l}"));
        let short = arg.get_short().map(|s| format!("-{s}"));
        for flag in long.into_iter().chain(short) {
            if flag.starts_with(partial) {
                candidates.push(Candidate {
                    value: flag,
                    description: description.clone(),
                });
            }
        }
    }
    Completion::Candidates {
        candidates,
        files: false,
    }
}

/// A description on one protocol line: its first line, without the tabs and newlines that
/// would break the protocol.
fn one_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .replace('\t', " ")
        .trim()
        .to_string()
}

/// The completion of `words` in Cobra's protocol, names listed from the cluster if asked for.
/// Never fails: listing problems go to stderr (which shells hide while completing).
pub async fn run(words: &[String]) -> String {
    let (candidates, directive) = match complete(words) {
        Completion::Candidates { candidates, files } => (
            candidates,
            if files {
                DIRECTIVE_DEFAULT
            } else {
                DIRECTIVE_NO_FILE_COMP
            },
        ),
        Completion::Names { typed, prefix } => {
            let names = match tokio::time::timeout(LIST_TIMEOUT, list_names(typed)).await {
                Ok(Ok(names)) => names,
                Ok(Err(e)) => {
                    eprintln!("kubectl_complete-gitdev: no names: {e}");
                    Vec::new()
                }
                Err(_) => {
                    eprintln!(
                        "kubectl_complete-gitdev: no names: listing took more than {LIST_TIMEOUT:?}"
                    );
                    Vec::new()
                }
            };
            let candidates = names
                .into_iter()
                .filter(|name| name.starts_with(&prefix))
                .map(|value| Candidate {
                    value,
                    description: None,
                })
                .collect();
            (candidates, DIRECTIVE_NO_FILE_COMP)
        }
    };
    protocol(&candidates, directive)
}

/// The names of the gitdeployments in the namespace the command would use, read as the user.
async fn list_names(typed: Typed) -> Result<Vec<String>, String> {
    let global = GlobalArgs {
        namespace: typed.namespace,
        kubeconfig: typed.kubeconfig.map(PathBuf::from),
        context: typed.context,
        api_url: DEFAULT_API_URL.to_string(),
    };
    let ctx = Context::connect(&global).await.map_err(|e| e.to_string())?;
    // Metadata only: names are all that is needed, and it asks for the same `list` right.
    let list = ctx
        .objects()
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| {
            format!(
                "cannot list gitdeployments in namespace {:?}: {e}",
                ctx.namespace
            )
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect())
}

/// Cobra's completion output: `value[\tdescription]` lines, then `:directive`.
pub fn protocol(candidates: &[Candidate], directive: u32) -> String {
    let mut text = String::new();
    for c in candidates {
        // A candidate with a newline would read as two; none of ours has one, but names come
        // from the cluster, so skip rather than trust.
        if c.value.is_empty() || c.value.contains(['\n', '\t']) {
            continue;
        }
        text.push_str(&c.value);
        if let Some(description) = c.description.as_deref().filter(|d| !d.is_empty()) {
            text.push('\t');
            text.push_str(description);
        }
        text.push('\n');
    }
    text.push_str(&format!(":{directive}\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    /// The candidate values for `w`, asserting the shell is kept from file names.
    fn values(w: &[&str]) -> Vec<String> {
        match complete(&words(w)) {
            Completion::Candidates {
                candidates,
                files: false,
            } => candidates.into_iter().map(|c| c.value).collect(),
            other => panic!("{w:?} completed to {other:?}"),
        }
    }

    fn names(w: &[&str]) -> (Typed, String) {
        match complete(&words(w)) {
            Completion::Names { typed, prefix } => (typed, prefix),
            other => panic!("{w:?} completed to {other:?}"),
        }
    }

    #[test]
    fn the_first_word_completes_to_the_subcommands_with_their_descriptions() {
        let Completion::Candidates { candidates, files } = complete(&words(&[""])) else {
            panic!("subcommands expected");
        };
        assert!(!files);
        let names: Vec<&str> = candidates.iter().map(|c| c.value.as_str()).collect();
        for sub in [
            "logs",
            "history",
            "why",
            "redeploy",
            "cancel",
            "resume",
            "adopt",
            "completion",
        ] {
            assert!(names.contains(&sub), "{sub} in {names:?}");
        }
        let logs = candidates.iter().find(|c| c.value == "logs");
        assert_eq!(
            logs.and_then(|c| c.description.as_deref()),
            Some("The build log of the current (or a past) deployment")
        );
    }

    #[test]
    fn a_partial_subcommand_completes_to_those_it_starts() {
        assert_eq!(values(&["re"]), ["redeploy", "resume"]);
        assert_eq!(values(&["-n", "apps", "l"]), ["logs"]);
    }

    #[test]
    fn a_dash_completes_to_the_flags_of_the_subcommand_including_the_global_ones() {
        let flags = values(&["why", "-"]);
        for flag in ["--namespace", "-n", "--output", "-o", "--events", "--help"] {
            assert!(flags.contains(&flag.to_string()), "{flag} in {flags:?}");
        }
        assert!(
            !flags.contains(&"--follow".to_string()),
            "logs' own: {flags:?}"
        );
        assert!(
            !values(&["logs", "-"]).contains(&"--poll-seconds".to_string()),
            "hidden flags are not offered"
        );
        assert_eq!(values(&["history", "--o"]), ["--output"]);
    }

    #[test]
    fn the_output_flag_completes_to_its_formats() {
        assert_eq!(values(&["history", "-o", ""]), ["table", "json", "yaml"]);
        assert_eq!(values(&["why", "--output", "y"]), ["yaml"]);
        assert_eq!(values(&["adopt", "--output=j"]), ["--output=json"]);
    }

    #[test]
    fn the_name_of_exactly_the_six_object_commands_completes_to_gitdeployments() {
        let with_names = ["logs", "history", "why", "redeploy", "cancel", "resume"];
        let mut root = Cli::command();
        root.build();
        for sub in root.get_subcommands() {
            let name = sub.get_name();
            let completion = complete(&words(&[name, "w"]));
            assert_eq!(
                matches!(completion, Completion::Names { .. }),
                with_names.contains(&name),
                "{name}: {completion:?}"
            );
        }
        assert_eq!(names(&["why", "w"]), (Typed::default(), "w".to_string()));
    }

    #[test]
    fn names_are_listed_in_the_namespace_context_and_kubeconfig_typed_in_any_spelling() {
        let expected = |namespace: &str| Typed {
            namespace: Some(namespace.to_string()),
            ..Typed::default()
        };
        assert_eq!(names(&["-n", "apps", "why", ""]).0, expected("apps"));
        assert_eq!(names(&["logs", "-napps", ""]).0, expected("apps"));
        assert_eq!(names(&["logs", "-fn", "apps", ""]).0, expected("apps"));
        assert_eq!(
            names(&["cancel", "--namespace=apps", ""]).0,
            expected("apps")
        );
        let (typed, _) = names(&[
            "--kubeconfig",
            "/k.yaml",
            "history",
            "--context",
            "dev",
            "-o",
            "json",
            "",
        ]);
        assert_eq!(
            typed,
            Typed {
                namespace: None,
                kubeconfig: Some("/k.yaml".into()),
                context: Some("dev".into()),
            }
        );
    }

    #[test]
    fn nothing_is_offered_after_the_name_or_an_unknown_command_and_a_path_flag_allows_files() {
        assert!(values(&["why", "web", ""]).is_empty());
        assert!(values(&["nonsense", ""]).is_empty());
        assert!(values(&["-n", ""]).is_empty(), "namespaces are not listed");
        assert_eq!(
            complete(&words(&["--kubeconfig", ""])),
            Completion::Candidates {
                candidates: Vec::new(),
                files: true
            }
        );
    }

    #[test]
    fn the_completion_subcommand_completes_to_the_shells() {
        let shells = values(&["completion", ""]);
        for shell in ["bash", "zsh", "fish"] {
            assert!(shells.contains(&shell.to_string()), "{shells:?}");
        }
    }

    #[test]
    fn no_words_at_all_complete_like_an_empty_first_word() {
        assert_eq!(complete(&[]), complete(&words(&[""])));
    }

    #[test]
    fn the_protocol_is_one_candidate_a_line_with_a_tab_before_its_description_then_the_directive() {
        let text = protocol(
            &[
                Candidate {
                    value: "logs".into(),
                    description: Some("The build log.".into()),
                },
                Candidate {
                    value: "web".into(),
                    description: None,
                },
                Candidate {
                    value: "bad\nname".into(),
                    description: None,
                },
            ],
            DIRECTIVE_NO_FILE_COMP,
        );
        assert_eq!(text, "logs\tThe build log.\nweb\n:4\n");
        assert_eq!(protocol(&[], DIRECTIVE_DEFAULT), ":0\n");
    }
}
