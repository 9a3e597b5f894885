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
