use super::{ApiState, Container, PlatformScalar};
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

    /// Creates a scratch container, with no image or metadata.
    ///
    /// To pull an image, follow up with the "from" function.
    async fn container(&self, ctx: &Context<'_>, platform: Option<PlatformScalar>) -> Container {
        let state = ctx.data_unchecked::<std::sync::Arc<ApiState>>();
        Container::scratch(
            platform
                .map(|p| p.0)
                .unwrap_or_else(|| state.default_platform.clone()),
        )
    }
}
