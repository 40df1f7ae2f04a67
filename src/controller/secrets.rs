//! The API token and `envFrom` values, read from Secrets in the object's namespace.
//!
//! Reading is IO; turning what was read into a token, environment or a human-readable
//! problem is pure and tested here.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::decision::Health;
use super::secret_cache::SecretCache;
use crate::api::ApiToken;
use crate::metrics::Metrics;
use crate::resource::{GitDeploymentSpec, SecretKeyRef};

/// Something only a human can fix about the Secrets an object refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretProblem {
    CredentialsNotFound {
        name: String,
    },
    CredentialsKeyMissing {
        name: String,
        key: String,
    },
    CredentialsInvalid {
        name: String,
        key: String,
        why: &'static str,
    },
    EnvSecretNotFound {
        name: String,
    },
    EnvNameInvalid {
        name: String,
        variable: String,
    },
    /// The environment passed `ENV_LIMIT_BYTES` while reading Secret `name` (or `envVars`).
    EnvTooLarge {
        name: String,
    },
}

/// The most environment (names and values, `envFrom` and `envVars` together) sent with one
/// deployment. Secrets are up to 1 MiB each and a tenant may list many: without a bound, one
/// object could make the operator copy tens of MiB on every reconcile.
pub const ENV_LIMIT_BYTES: usize = 64 * 1024;

impl SecretProblem {
    pub fn health(&self, namespace: &str) -> Health {
        match self {
            SecretProblem::CredentialsNotFound { name } => Health::stalled(
                "CredentialsNotFound",
                format!(
                    "Secret {namespace}/{name} with the git.dev API token does not exist: create it (kubectl create secret generic {name} -n {namespace} --from-literal=token=<API token>) or point spec.credentialsSecretRef at another Secret"
                ),
            ),
            SecretProblem::CredentialsKeyMissing { name, key } => Health::stalled(
                "CredentialsKeyMissing",
                format!(
                    "Secret {namespace}/{name} has no key '{key}': put the API token under that key or set spec.credentialsSecretRef.key"
                ),
            ),
            SecretProblem::CredentialsInvalid { name, key, why } => Health::stalled(
                "CredentialsInvalid",
                format!(
                    "key '{key}' of Secret {namespace}/{name} is not a usable API token ({why}): put the token itself there"
                ),
            ),
            SecretProblem::EnvSecretNotFound { name } => Health::stalled(
                "EnvSecretNotFound",
                format!(
                    "Secret {namespace}/{name} named in spec.envFrom does not exist: create it or remove it from spec.envFrom"
                ),
            ),
            SecretProblem::EnvTooLarge { name } => Health::stalled(
                "EnvTooLarge",
                format!(
                    "the environment of spec.envFrom and spec.envVars is over {} KiB, the most sent with one deployment (the limit was passed at {name}): move large values out of the environment or split the Secret",
                    ENV_LIMIT_BYTES / 1024
                ),
            ),
            SecretProblem::EnvNameInvalid { name, variable } => Health::stalled(
                "EnvNameInvalid",
                format!(
                    "Secret {namespace}/{name} in spec.envFrom gives the variable name '{variable}', which is not [A-Za-z_][A-Za-z0-9_]*: rename the key or set a prefix"
                ),
            ),
        }
    }
}

/// The token under `r.key` of the Secret, if the Secret exists and holds a usable one.
pub fn token_from(secret: Option<&Secret>, r: &SecretKeyRef) -> Result<ApiToken, SecretProblem> {
    let secret = secret.ok_or_else(|| SecretProblem::CredentialsNotFound {
        name: r.name.clone(),
    })?;
    let bytes = value(secret, &r.key).ok_or_else(|| SecretProblem::CredentialsKeyMissing {
        name: r.name.clone(),
        key: r.key.clone(),
    })?;
    let invalid = |why| SecretProblem::CredentialsInvalid {
        name: r.name.clone(),
        key: r.key.clone(),
        why,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8"))?;
    // A trailing newline from `echo token > file` is a common accident, not part of the token.
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("empty"));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid("contains spaces or non-ASCII characters"));
    }
    Ok(ApiToken::new(token))
}

/// `envFrom` Secrets merged in order, then `envVars` on top.
pub fn env_from<'a>(
    spec: &GitDeploymentSpec,
    lookup: impl Fn(&str) -> Option<&'a Secret>,
) -> Result<BTreeMap<String, String>, SecretProblem> {
    let mut env = BTreeMap::new();
    let mut total = 0usize;
    let mut count = |name: &str, variable: &str, value: &[u8]| {
        total = total
            .saturating_add(variable.len())
            .saturating_add(value.len());
        if total > ENV_LIMIT_BYTES {
            Err(SecretProblem::EnvTooLarge {
                name: name.to_string(),
            })
        } else {
            Ok(())
        }
    };
    for source in &spec.env_from {
        let name = &source.secret_ref.name;
        let secret =
            lookup(name).ok_or_else(|| SecretProblem::EnvSecretNotFound { name: name.clone() })?;
        let mut keys: Vec<String> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        keys.extend(secret.string_data.iter().flatten().map(|(k, _)| k.clone()));
        for key in keys {
            let variable = format!("{}{key}", source.prefix.as_deref().unwrap_or(""));
            if !is_env_name(&variable) {
                return Err(SecretProblem::EnvNameInvalid {
                    name: name.clone(),
                    variable,
                });
            }
            let bytes = value(secret, &key).unwrap_or_default();
            count(name, &variable, bytes)?;
            env.insert(variable, String::from_utf8_lossy(bytes).into_owned());
        }
    }
    for (k, v) in &spec.env_vars {
        count("spec.envVars", k, v.as_bytes())?;
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

fn value<'s>(secret: &'s Secret, key: &str) -> Option<&'s [u8]> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Every Secret the object refers to (each once), from `cache` where it holds the version
/// the watch shows, else read from the API server (or taken from a read of it under way) and
/// kept.
pub async fn read_all(
    api: &Api<Secret>,
    cache: &SecretCache,
    metrics: &Metrics,
    namespace: &str,
    spec: &GitDeploymentSpec,
    default_credentials: &str,
) -> Result<BTreeMap<String, Arc<Secret>>, kube::Error> {
    let mut found = BTreeMap::new();
    for name in referenced(spec, default_credentials) {
        if found.contains_key(&name) {
            continue;
        }
        let (secret, sent) = cache.read(namespace, &name, || api.get_opt(&name)).await?;
        // A read shared with a reconcile that sent it is served from memory too.
        metrics.secret_read(if sent { "api" } else { "cache" });
        if let Some(secret) = secret {
            found.insert(name, secret);
        }
    }
    Ok(found)
}

/// Names of the Secrets an object refers to, for waking it when one of them changes.
pub fn referenced<'a>(
    spec: &'a GitDeploymentSpec,
    default_credentials: &str,
) -> impl Iterator<Item = String> + 'a {
    std::iter::once(spec.credentials_or(default_credentials).name)
        .chain(spec.env_from.iter().map(|e| e.secret_ref.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn spec(json: serde_json::Value) -> GitDeploymentSpec {
        let mut base = serde_json::json!({"projectId": "proj_8f3k29", "branch": "main"});
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_token_is_read_from_the_referenced_key_and_trimmed() {
        let r = SecretKeyRef::default();
        let t = token_from(Some(&secret(&[("token", b"sk_test_write\n")])), &r).unwrap();
        assert_eq!(t.expose(), "sk_test_write");
    }

    #[test]
    fn each_credentials_problem_names_what_to_fix() {
        let r = SecretKeyRef::default();
        let cases: Vec<(Option<Secret>, &str)> = vec![
            (None, "CredentialsNotFound"),
            (Some(secret(&[("other", b"x")])), "CredentialsKeyMissing"),
            (Some(secret(&[("token", b"  \n")])), "CredentialsInvalid"),
            (
                Some(secret(&[("token", b"two words")])),
                "CredentialsInvalid",
            ),
            (
                Some(secret(&[("token", &[0xff, 0xfe])])),
                "CredentialsInvalid",
            ),
        ];
        for (s, reason) in cases {
            let problem = token_from(s.as_ref(), &r).unwrap_err();
            let health = problem.health("team-a");
            assert_eq!(health.reason(), reason);
            let Health::Stalled { message, .. } = health else {
                panic!()
            };
            assert!(message.contains("team-a/gitdev-credentials"), "{message}");
        }
    }

    #[test]
    fn env_vars_win_over_env_from_and_later_secrets_win_over_earlier_ones() {
        let s = spec(serde_json::json!({
            "envVars": {"MODE": "explicit"},
            "envFrom": [{"secretRef": {"name": "a"}}, {"secretRef": {"name": "b"}, "prefix": "B_"}, {"secretRef": {"name": "c"}}]
        }));
        let a = secret(&[("MODE", b"from-a"), ("SHARED", b"a")]);
        let b = secret(&[("KEY", b"b")]);
        let c = secret(&[("SHARED", b"c")]);
        let env = env_from(&s, |n| match n {
            "a" => Some(&a),
            "b" => Some(&b),
            "c" => Some(&c),
            _ => None,
        })
        .unwrap();
        assert_eq!(env["MODE"], "explicit");
        assert_eq!(env["SHARED"], "c");
        assert_eq!(env["B_KEY"], "b");
    }

    #[test]
    fn a_missing_env_secret_or_a_bad_variable_name_is_a_problem() {
        let s = spec(serde_json::json!({"envFrom": [{"secretRef": {"name": "a"}}]}));
        assert_eq!(
            env_from(&s, |_| None).unwrap_err(),
            SecretProblem::EnvSecretNotFound { name: "a".into() }
        );
        let bad = secret(&[("my-key", b"x")]);
        let err = env_from(&s, |_| Some(&bad)).unwrap_err();
        assert_eq!(err.health("ns").reason(), "EnvNameInvalid");
    }

    #[test]
    fn an_environment_over_the_limit_is_a_problem_naming_where_it_was_passed() {
        let s = spec(serde_json::json!({
            "envFrom": [{"secretRef": {"name": "small"}}, {"secretRef": {"name": "big"}}]
        }));
        let small = secret(&[("A", b"1")]);
        let half = vec![b'x'; ENV_LIMIT_BYTES / 2];
        let big = secret(&[("B", &half), ("C", &half)]);
        let err = env_from(&s, |n| match n {
            "small" => Some(&small),
            "big" => Some(&big),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err, SecretProblem::EnvTooLarge { name: "big".into() });
        let health = err.health("ns");
        assert_eq!(health.reason(), "EnvTooLarge");
        assert!(health.message().contains("64 KiB"), "{}", health.message());

        let just_under = secret(&[("B", &half[..ENV_LIMIT_BYTES / 2 - 10])]);
        assert!(env_from(&s, |n| (n == "big").then_some(&just_under).or(Some(&small))).is_ok());

        let vars = spec(serde_json::json!({"envVars": {"HUGE": "y".repeat(ENV_LIMIT_BYTES)}}));
        assert_eq!(
            env_from(&vars, |_| None).unwrap_err(),
            SecretProblem::EnvTooLarge {
                name: "spec.envVars".into()
            }
        );
    }

    #[test]
    fn env_names_follow_the_posix_shape() {
        for ok in ["A", "_x", "NODE_ENV", "a1"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }
}
