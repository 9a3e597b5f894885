use super::{ApiState, PlatformScalar};
use async_graphql::{Context, Object};

pub struct QueryRoot;

/// The root of the Dagger API.
#[Object(name = "Query")]
impl QueryRoot {
    /// Get the current Dagger Engine version.
    async fn version(&self) -> &'static str {
        crate::VERSION
    }

    /// The default platform of the engine.
    async fn default_platform(&self, ctx: &Context<'_>) -> PlatformScalar {
        PlatformScalar(
            ctx.data_unchecked::<std::sync::Arc<ApiState>>()
                .default_platform
                .clone(),
        )
    }
}
