//! Secret values. They live in engine memory only: never in IDs, cache keys, logs, errors or
//! the database. A secret set with `setSecret` is named in the graph by a digest salted with a
//! random per-engine key, so the digest reveals nothing and does not outlive the engine.

use super::node::SecretNode;
use super::{Result, SolveError};
use crate::oci::Digest;
use std::collections::HashMap;
use std::sync::Mutex;

pub struct Secrets {
    salt: [u8; 32],
    values: Mutex<HashMap<String, Vec<u8>>>,
}

impl Secrets {
    pub fn new() -> Self {
        let mut salt = [0u8; 32];
        // The kernel's CSPRNG; failing to read it would make handles guessable, so fall back
        // to hashing time and address entropy only as a last resort.
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
            .is_err()
        {
            let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &salt);
            salt = *Digest::of(seed.as_bytes())
                .hex()
                .as_bytes()
                .first_chunk::<32>()
                .unwrap_or(&[7; 32]);
        }
        Secrets {
            salt,
            values: Mutex::new(HashMap::new()),
        }
    }

    fn handle(&self, name: &str, plaintext: &[u8]) -> String {
        let mut material = self.salt.to_vec();
        material.extend_from_slice(name.as_bytes());
        material.push(0);
        material.extend_from_slice(plaintext);
        Digest::of(&material).hex().to_string()
    }

    /// Stores `plaintext` and returns the node that names it.
    pub fn set(&self, name: &str, plaintext: &[u8]) -> SecretNode {
        let handle = self.handle(name, plaintext);
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.clone(), plaintext.to_vec());
        SecretNode::Set {
            name: name.to_string(),
            handle,
        }
    }

    /// The value of a secret node.
    pub fn plaintext(&self, node: &SecretNode) -> Result<Vec<u8>> {
        match node {
            SecretNode::Set { name, handle } => self
                .values
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(handle)
                .cloned()
                .ok_or_else(|| {
                    SolveError::InvalidArgument(format!(
                        "secret {name:?} is not known to this engine (secrets live in memory: set it again after an engine restart)"
                    ))
                }),
        }
    }

    /// What a cache key may contain for a secret: a salted digest of its current value.
    pub fn key_material(&self, node: &SecretNode) -> Result<String> {
        let SecretNode::Set { handle, .. } = node;
        Ok(handle.clone())
    }
}

impl Default for Secrets {
    fn default() -> Self {
        Self::new()
    }
}

/// Replaces every secret value in `text` with `***`.
pub fn scrub(text: &str, values: &[Vec<u8>]) -> String {
    let mut out = text.to_string();
    for v in values {
        if let Ok(s) = std::str::from_utf8(v) {
            if !s.is_empty() {
                out = out.replace(s, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_hide_values_and_differ_per_engine() {
        let a = Secrets::new();
        let b = Secrets::new();
        let na = a.set("token", b"hunter2");
        let nb = b.set("token", b"hunter2");
        assert_ne!(na, nb, "salted per engine");
        let json = serde_json::to_string(&na).unwrap();
        assert!(!json.contains("hunter2"));
        assert_eq!(a.plaintext(&na).unwrap(), b"hunter2");
        assert!(b.plaintext(&na).is_err());
        assert_eq!(
            scrub("the token is hunter2!", &[b"hunter2".to_vec()]),
            "the token is ***!"
        );
    }
}
