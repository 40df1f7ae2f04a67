//! The operator's own key: it signs the state the operator writes on objects and keys the
//! part of spec fingerprints that covers Secret values.
//!
//! The key lives in a Secret in the operator's namespace, read at start or created there when
//! missing (no Helm `lookup`, which finds nothing under `helm template` and Argo CD). The
//! `--fingerprint-key` flag overrides it. Every signature and fingerprint names the key by a
//! short id, so that a signature or fingerprint made under another key (a rotation, a
//! restore into another cluster) is recognised as such instead of looking like a change.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::{digest, hmac};

/// The data key of the key Secret.
pub const SECRET_KEY: &str = "key";

/// Bytes of a key the operator makes itself.
const NEW_KEY_BYTES: usize = 32;

/// A key and its id.
#[derive(Clone)]
pub struct Key {
    id: String,
    hmac: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Key").field("id", &self.id).finish()
    }
}

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        Key {
            id: hex(&digest::digest(&digest::SHA256, bytes).as_ref()[..4]),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Eight hex digits that tell keys apart and reveal nothing of the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256 over `parts`, each length-prefixed so that no two different lists of
    /// parts sign alike, as 32 hex digits.
    pub fn tag(&self, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.hmac);
        for part in parts {
            ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            ctx.update(part);
        }
        hex(&ctx.sign().as_ref()[..16])
    }

    /// `"<key id>:<tag>"`.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        format!("{}:{}", self.id, self.tag(parts))
    }

    /// Whether `signature` is this key's signature of `parts` (a constant-time comparison).
    pub fn verifies(&self, signature: &str, parts: &[&[u8]]) -> bool {
        let Some((id, tag)) = signature.split_once(':') else {
            return false;
        };
        id == self.id && ring_eq(tag.as_bytes(), self.tag(parts).as_bytes())
    }
}

/// What verifies the operator's signatures: its current key, and keys it used before that it
/// still knows (the key Secret while `--fingerprint-key` overrides it), so that a key change
/// does not turn every state the operator signed into a mere hint.
pub trait Verify {
    /// The key new signatures are made with.
    fn current(&self) -> &Key;
    /// Whether any known key made `signature` of `parts`.
    fn verifies(&self, signature: &str, parts: &[&[u8]]) -> bool;
}

impl Verify for Key {
    fn current(&self) -> &Key {
        self
    }

    fn verifies(&self, signature: &str, parts: &[&[u8]]) -> bool {
        Key::verifies(self, signature, parts)
    }
}

/// The current key and the older ones still accepted.
pub struct KeyRing<'a> {
    pub current: &'a Key,
    pub older: &'a [Key],
}

impl Verify for KeyRing<'_> {
    fn current(&self) -> &Key {
        self.current
    }

    fn verifies(&self, signature: &str, parts: &[&[u8]]) -> bool {
        self.current.verifies(signature, parts)
            || self.older.iter().any(|k| k.verifies(signature, parts))
    }
}

/// Reads the key Secret without creating it: the key the operator used before a
/// `--fingerprint-key` override, if there is one and it may be read.
pub async fn read_existing(client: Client, namespace: &str, name: &str) -> Option<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = api.get_opt(name).await.ok().flatten()?;
    key_of(&secret, name).ok()
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the key Secret `namespace/name`, or creates it with a new random key when it does
/// not exist, and returns the key's bytes. Two replicas starting together agree: the second
/// create fails with 409 and reads what the first wrote.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<u8>, String> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let where_ = format!("key Secret {namespace}/{name}");
    for _ in 0..3 {
        match api.get_opt(name).await {
            Ok(Some(secret)) => return key_of(&secret, &where_),
            Ok(None) => {}
            Err(e) => {
                return Err(format!(
                    "reading the {where_}: {e} (the operator needs get and create on Secrets in its own namespace)"
                ));
            }
        }
        let mut bytes = vec![0u8; NEW_KEY_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| format!("making a new key for the {where_}: no system randomness"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "gitdev-operator".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(SECRET_KEY.to_string(), ByteString(bytes))].into()),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = %name, %namespace, "created the operator's key Secret");
                return key_of(&created, &where_);
            }
            // Another replica made it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => {
                return Err(format!(
                    "creating the {where_}: {e} (the operator needs get and create on Secrets in its own namespace)"
                ));
            }
        }
    }
    Err(format!(
        "the {where_} was neither readable nor creatable after three tries"
    ))
}

fn key_of(secret: &Secret, where_: &str) -> Result<Vec<u8>, String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_KEY))
        .map(|b| b.0.as_slice())
        .filter(|b| b.len() >= 16)
        .ok_or_else(|| {
            format!(
                "the {where_} has no data key '{SECRET_KEY}' of at least 16 bytes: delete it to let the operator make a new one (objects are re-stamped, not redeployed)"
            )
        })?;
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_the_same_key_and_the_same_parts() {
        let key = Key::new(b"0123456789abcdef");
        let other = Key::new(b"fedcba9876543210");
        let sig = key.sign(&[b"ns", b"web", b"{}"]);
        assert!(sig.starts_with(key.id()));
        assert!(key.verifies(&sig, &[b"ns", b"web", b"{}"]));
        assert!(!key.verifies(&sig, &[b"ns", b"web2", b"{}"]));
        assert!(
            !key.verifies(&sig, &[b"nsw", b"eb", b"{}"]),
            "parts are delimited"
        );
        assert!(!other.verifies(&sig, &[b"ns", b"web", b"{}"]));
        assert!(!key.verifies("garbage", &[b"ns"]));
        assert!(!key.verifies("", &[]));

        let older = [other.clone()];
        let ring = KeyRing {
            current: &other,
            older: &[],
        };
        assert!(!Verify::verifies(&ring, &sig, &[b"ns", b"web", b"{}"]));
        let ring = KeyRing {
            current: &Key::new(b"the-newest-key-x"),
            older: &[key.clone(), older[0].clone()],
        };
        assert!(Verify::verifies(&ring, &sig, &[b"ns", b"web", b"{}"]));
    }

    #[test]
    fn a_key_id_is_short_stable_and_reveals_nothing() {
        let key = Key::new(b"0123456789abcdef");
        assert_eq!(key.id(), Key::new(b"0123456789abcdef").id());
        assert_ne!(key.id(), Key::new(b"0123456789abcdeg").id());
        assert_eq!(key.id().len(), 8);
        assert!(!format!("{key:?}").contains("0123"));
    }

    #[test]
    fn a_key_secret_without_a_usable_key_says_how_to_fix_it() {
        let empty = Secret::default();
        let err = key_of(&empty, "key Secret ops/gitdev-operator-key").unwrap_err();
        assert!(err.contains("delete it"), "{err}");
        let short = Secret {
            data: Some([(SECRET_KEY.to_string(), ByteString(b"short".to_vec()))].into()),
            ..Secret::default()
        };
        assert!(key_of(&short, "x").is_err());
    }
}
