//! What can go wrong in the plugin, and the exit code a script sees for it.

use crate::api::ApiError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: any other error (message on stderr).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the command line is wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the object (or the Secret it names) does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: the user's RBAC does not allow a read or write the command needs.
pub const EXIT_FORBIDDEN: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes object the command needs is missing.
    #[error("{kind} {name:?} not found in namespace {namespace:?}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    /// The API server refused the user: `what` names the object, `needs` the RBAC rule.
    #[error("forbidden: you may not {what}. {needs}\n(the API server said: {message})")]
    Forbidden {
        what: String,
        needs: String,
        message: String,
    },
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Kube(String),
    #[error("git.dev API: {0}")]
    Api(#[from] ApiError),
    /// The object is not in a state the command can work with (no deployment yet, a bad token).
    #[error("{0}")]
    State(String),
    #[error("cannot write output: {0}")]
    Output(String),
}

impl Error {
    /// The exit code scripts branch on (see `docs/kubectl-plugin.md`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound { .. } => EXIT_NOT_FOUND,
            Self::Forbidden { .. } => EXIT_FORBIDDEN,
            Self::Config(_) | Self::Kube(_) | Self::Api(_) | Self::State(_) | Self::Output(_) => {
                EXIT_ERROR
            }
        }
    }

    /// A stable label of the kind of failure, for `--output json` error reports and tests.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Forbidden { .. } => "forbidden",
            Self::Config(_) => "config",
            Self::Kube(_) => "kubernetes",
            Self::Api(_) => "api",
            Self::State(_) => "state",
            Self::Output(_) => "output",
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e.to_string())
    }
}

/// One Kubernetes access, described for error messages: which object, and the RBAC rule that
/// allows it.
pub struct Access<'a> {
    pub verb: &'a str,
    pub kind: &'static str,
    /// `resource.group` as RBAC spells it, e.g. `gitdeployments.git.dev`, `secrets`.
    pub resource: &'a str,
    pub name: Option<&'a str>,
    pub namespace: &'a str,
}

impl Access<'_> {
    /// A kube error of this access as a plugin error: 404 and 403 get their own exit codes and
    /// say exactly what was missing, so a user can ask for the right Role.
    pub fn error(&self, e: kube::Error) -> Error {
        let target = match self.name {
            Some(name) => format!("{} {name:?}", self.kind),
            None => format!("{}s", self.kind),
        };
        match &e {
            kube::Error::Api(status) if status.code == 404 => Error::NotFound {
                kind: self.kind,
                name: self.name.unwrap_or_default().to_string(),
                namespace: self.namespace.to_string(),
            },
            kube::Error::Api(status) if status.code == 403 => {
                let (group, resource) = match self.resource.split_once('.') {
                    Some((r, g)) => (g, r),
                    None => ("", self.resource),
                };
                let names = self
                    .name
                    .map(|n| format!(", resourceNames: [{n:?}]"))
                    .unwrap_or_default();
                Error::Forbidden {
                    what: format!("{} {target} in namespace {:?}", self.verb, self.namespace),
                    needs: format!(
                        "This needs a Role in namespace {:?} bound to you with the rule {{apiGroups: [{group:?}], resources: [{resource:?}], verbs: [{:?}]{names}}}.",
                        self.namespace, self.verb
                    ),
                    message: status.message.clone(),
                }
            }
            _ => Error::Kube(format!(
                "cannot {} {target} in namespace {:?}: {e}",
                self.verb, self.namespace
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "nope".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_forbidden_secret_names_the_secret_namespace_and_rule() {
        let access = Access {
            verb: "get",
            kind: "Secret",
            resource: "secrets",
            name: Some("gitdev-credentials"),
            namespace: "apps",
        };
        let e = access.error(status(403));
        assert_eq!(e.exit_code(), EXIT_FORBIDDEN);
        let text = e.to_string();
        assert!(
            text.contains("Secret \"gitdev-credentials\" in namespace \"apps\""),
            "{text}"
        );
        assert!(text.contains("resources: [\"secrets\"]"), "{text}");
        assert!(text.contains("apiGroups: [\"\"]"), "{text}");
    }

    #[test]
    fn a_missing_object_exits_with_the_not_found_code() {
        let access = Access {
            verb: "get",
            kind: "gitdeployment",
            resource: "gitdeployments.git.dev",
            name: Some("web"),
            namespace: "apps",
        };
        let e = access.error(status(404));
        assert_eq!(e.exit_code(), EXIT_NOT_FOUND);
        assert_eq!(e.category(), "not_found");
    }
}
