use crate::oci::Platform;
use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

/// The platform config OS and architecture in a Container.
///
/// The format is [os]/[platform]/[version] (e.g., "darwin/arm64/v7", "windows/amd64", "linux/arm64").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformScalar(pub Platform);

#[Scalar(name = "Platform")]
impl ScalarType for PlatformScalar {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => Platform::parse(&s)
                .map(PlatformScalar)
                .map_err(|e| InputValueError::custom(e.to_string())),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(_))
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// The legacy per-type ID scalars (`ContainerID`...), the argument types of the
/// `load<T>FromID` loaders that SDKs generated before v0.22 call.
macro_rules! id_scalar {
    ($rust:ident, $name:literal) => {
        #[doc = concat!("The `", $name, "` scalar type represents an identifier for an object of that type.")]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $rust(pub String);

        #[Scalar(name = $name)]
        impl ScalarType for $rust {
            fn parse(value: Value) -> InputValueResult<Self> {
                match value {
                    Value::String(s) => Ok($rust(s)),
                    other => Err(InputValueError::expected_type(other)),
                }
            }

            fn is_valid(value: &Value) -> bool {
                matches!(value, Value::String(_))
            }

            fn to_value(&self) -> Value {
                Value::String(self.0.clone())
            }
        }
    };
}

id_scalar!(ContainerId, "ContainerID");
id_scalar!(DirectoryId, "DirectoryID");
id_scalar!(FileId, "FileID");
id_scalar!(EnvVariableId, "EnvVariableID");
id_scalar!(LabelId, "LabelID");
id_scalar!(PortId, "PortID");
id_scalar!(CacheVolumeId, "CacheVolumeID");
id_scalar!(SecretId, "SecretID");
id_scalar!(SocketId, "SocketID");

/// The absence of a value.
///
/// A Null Void is used as a placeholder for resolvers that do not return anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Void;

#[Scalar(name = "Void")]
impl ScalarType for Void {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::Null => Ok(Void),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::Null)
    }

    fn to_value(&self) -> Value {
        Value::Null
    }
}
