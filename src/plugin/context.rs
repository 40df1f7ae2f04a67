//! The user's cluster (their kubeconfig, their RBAC) and the Deployments API, with the reads
//! every subcommand shares: the object, and the token of the Secret it names.

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::GlobalArgs;
use super::error::{Access, Error};
use crate::api::{ApiError, ApiToken, ClientConfig, HttpClient};
use crate::controller::secrets::token_from;
use crate::resource::{DEFAULT_CREDENTIALS_SECRET, GitDeployment, SecretKeyRef};

pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub api_url: String,
}

impl Context {
    /// Connects as kubectl would: `--kubeconfig` (else `$KUBECONFIG`, else ~/.kube/config),
    /// `--context`, and the context's namespace unless `-n` names one.
    pub async fn connect(args: &GlobalArgs) -> Result<Context, Error> {
        // kube's rustls needs a process-wide crypto provider; this crate builds only ring's.
        crate::api::client::install_crypto_provider();
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Context {
            client,
            namespace,
            api_url: args.api_url.clone(),
        })
    }

    pub fn objects(&self) -> Api<GitDeployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The object `name`; a missing one is exit code 3, a forbidden read exit code 4.
    pub async fn object(&self, name: &str) -> Result<GitDeployment, Error> {
        self.objects()
            .get(name)
            .await
            .map_err(|e| self.access("get", name).error(e))
    }

    /// How a read or write of gitdeployment `name` is described when it fails.
    pub fn access<'a>(&'a self, verb: &'a str, name: &'a str) -> Access<'a> {
        Access {
            verb,
            kind: "gitdeployment",
            resource: "gitdeployments.git.dev",
            name: Some(name),
            namespace: &self.namespace,
        }
    }

    /// The token of the Secret the object names (`spec.credentialsSecretRef`, else
    /// `gitdev-credentials`/`token`), read with the user's RBAC.
    pub async fn token_of(&self, obj: &GitDeployment) -> Result<ApiToken, Error> {
        let reference = obj.spec.credentials_or(DEFAULT_CREDENTIALS_SECRET);
        self.token(&reference).await
    }

    /// The token under `reference.key` of Secret `reference.name` in the namespace.
    pub async fn token(&self, reference: &SecretKeyRef) -> Result<ApiToken, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let access = Access {
            verb: "get",
            kind: "Secret",
            resource: "secrets",
            name: Some(&reference.name),
            namespace: &self.namespace,
        };
        let secret = secrets
            .get(&reference.name)
            .await
            .map_err(|e| access.error(e))?;
        // The operator's own reading of a token Secret, so that the plugin accepts exactly
        // the tokens the operator does and names the same fix.
        token_from(Some(&secret), reference)
            .map_err(|problem| Error::State(problem.health(&self.namespace).message().to_string()))
    }

    /// A client of the Deployments API at `--api-url`.
    pub fn api(&self) -> Result<HttpClient, Error> {
        HttpClient::new(ClientConfig::new(&self.api_url)).map_err(Error::Api)
    }
}

/// An API error as the plugin reports it (kept apart so messages can name the deployment).
pub fn api_error(id: &str, e: ApiError) -> Error {
    Error::State(format!("deployment {id}: {e}"))
}
