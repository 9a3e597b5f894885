//! Object IDs: `<Type>:<base64url(zstd(JSON of the node))>`. Self-contained, so an ID stays
//! valid in any later session and after a restart; deterministic, so the same calls give the
//! same ID; never all digits (Python's SDK would send those back as Int literals).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// Upper bound on a decoded ID, so a hostile ID cannot make us allocate without limit.
const MAX_DECODED: usize = 16 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid ID: {0}")]
    Malformed(String),
    #[error("ID is a {found}, but a {expected} is needed here")]
    WrongType { expected: String, found: String },
}

pub fn encode<T: Serialize>(type_name: &str, node: &T) -> String {
    let json = serde_json::to_vec(node).expect("nodes always serialize");
    let packed = zstd::bulk::compress(&json, 3).expect("in-memory compression");
    format!("{type_name}:{}", URL_SAFE_NO_PAD.encode(packed))
}

/// The type name an ID claims.
pub fn type_of(id: &str) -> Result<&str, IdError> {
    let (t, _) = id
        .split_once(':')
        .ok_or_else(|| IdError::Malformed("no type prefix".into()))?;
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(IdError::Malformed("bad type prefix".into()));
    }
    Ok(t)
}

pub fn decode<T: DeserializeOwned>(expected: &str, id: &str) -> Result<T, IdError> {
    let found = type_of(id)?;
    if found != expected {
        return Err(IdError::WrongType {
            expected: expected.into(),
            found: found.into(),
        });
    }
    let body = &id[found.len() + 1..];
    let packed = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| IdError::Malformed(format!("not base64url: {e}")))?;
    let json = zstd::bulk::decompress(&packed, MAX_DECODED)
        .map_err(|e| IdError::Malformed(format!("cannot unpack: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| IdError::Malformed(format!("not a {expected}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::node::{ContainerNode, DirectoryNode};

    #[test]
    fn round_trip_and_determinism() {
        let n = ContainerNode::From {
            parent: Box::new(ContainerNode::Scratch {
                platform: "linux/amd64".into(),
            }),
            address: "alpine".into(),
        };
        let a = encode("Container", &n);
        let b = encode("Container", &n.clone());
        assert_eq!(a, b, "same calls, same ID");
        assert!(a.starts_with("Container:"));
        assert!(a.parse::<i64>().is_err());
        assert_eq!(decode::<ContainerNode>("Container", &a).unwrap(), n);
        assert_eq!(type_of(&a).unwrap(), "Container");
        assert!(matches!(
            decode::<DirectoryNode>("Directory", &a),
            Err(IdError::WrongType { .. })
        ));
        for bad in [
            "",
            "Container",
            "Container:!!!",
            "Con tainer:abc",
            "Container:AAAA",
        ] {
            assert!(decode::<ContainerNode>("Container", bad).is_err(), "{bad}");
        }
    }
}
