//! Dagger's GraphQL core API. Resolvers are thin adapters over the engine's core; the schema
//! serves only fields that work (see `docs/compat.md`).

mod container;
mod directory;
mod engine;
mod enums;
mod git;
mod host;
mod node;
mod query;
mod scalars;
mod volumes;

pub use container::Container;
pub use directory::{Directory, File};
pub use git::{GitRef, GitRepository};
pub use query::QueryRoot;
pub use scalars::PlatformScalar;
pub use volumes::{CacheVolume, Secret, Socket};

use crate::error::{Classify, ErrorKind};
use crate::oci::Platform;
use crate::solver::{SolveError, Solver};
use async_graphql::ErrorExtensions;
use async_graphql::{
    EmptyMutation, EmptySubscription, ObjectType, Request, Response, Schema, SchemaBuilder,
    SubscriptionType, ValidationMode,
};

/// What resolvers can reach: the core they adapt.
pub struct ApiState {
    pub default_platform: Platform,
    pub solver: Solver,
    pub git: crate::git::GitService,
    /// The local cache's collector (`Query.engine.localCache`).
    pub gc: crate::gc::Gc,
    /// Client sockets (`Host.unixSocket`), reached through their sessions.
    pub sockets: crate::sockets::ClientSockets,
}

/// The [`ApiState`] every resolver reaches through its context.
pub(crate) fn state<'a>(ctx: &async_graphql::Context<'a>) -> &'a std::sync::Arc<ApiState> {
    ctx.data_unchecked::<std::sync::Arc<ApiState>>()
}

/// A GraphQL error whose `extensions.code` says what kind of failure it was.
pub(crate) fn gql_error(kind: ErrorKind, message: String) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", kind.code()))
}

/// Maps a module error to a GraphQL error, keeping its message and kind.
pub(crate) fn classified<E: Classify + std::fmt::Display + ?Sized>(e: &E) -> async_graphql::Error {
    gql_error(e.kind(), e.to_string())
}

/// Maps a solver error to a GraphQL error. A failed exec becomes the error the SDKs turn into
/// `ExecError`: `_type: EXEC_ERROR` with `cmd`, `exitCode`, `stdout` and `stderr` always set.
pub(crate) fn solve_error(e: &SolveError) -> async_graphql::Error {
    let Some(f) = e.exec_failure() else {
        return classified(e);
    };
    let f = f.clone();
    async_graphql::Error::new(f.message()).extend_with(move |_, ext| {
        ext.set("_type", "EXEC_ERROR");
        ext.set("cmd", f.cmd.clone());
        ext.set("exitCode", f.exit_code);
        ext.set("stdout", f.stdout.clone());
        ext.set("stderr", f.stderr.clone());
        if f.oom_killed {
            ext.set("oomKilled", true);
        }
    })
}

/// The served API.
pub type Api = Lenient<QueryRoot, EmptyMutation, EmptySubscription>;

/// How deeply a query's selections may nest, as far as the schema is concerned. The parser
/// (async-graphql-parser) has a fixed limit of its own, 64 nested fields, which is the real
/// ceiling: a chain of about 60 calls in one query (docs/compat.md).
pub const MAX_QUERY_DEPTH: usize = 256;

impl Api {
    pub fn new(state: ApiState) -> Self {
        let state = std::sync::Arc::new(state);
        let usage = state.gc.usage().clone();
        Lenient::build(|| {
            Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
                // SDKs send a pipeline as one selection nested once per call: async-graphql's
                // default (32 levels) would refuse ordinary pipelines. The engine's worker
                // stacks are sized for this (see main.rs).
                .limit_recursive_depth(MAX_QUERY_DEPTH)
                .data(state.clone())
                .extension(TrackOperations(usage.clone()))
        })
    }
}

/// Counts every request as a running operation for the garbage collector: what a request
/// obtains stays protected until it ends (see `crate::snapshot::usage`), and automatic
/// collection runs after requests finish.
struct TrackOperations(crate::gc::Usage);

impl async_graphql::extensions::ExtensionFactory for TrackOperations {
    fn create(&self) -> std::sync::Arc<dyn async_graphql::extensions::Extension> {
        std::sync::Arc::new(TrackOperations(self.0.clone()))
    }
}

#[async_graphql::async_trait::async_trait]
impl async_graphql::extensions::Extension for TrackOperations {
    async fn execute(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: async_graphql::extensions::NextExecute<'_>,
    ) -> Response {
        let _running = self.0.begin_operation();
        next.run(ctx, operation_name).await
    }
}

/// A schema validated strictly, with a lenient second pass for the one thing the real engine
/// tolerates and strict GraphQL does not.
///
/// The real engine turns off `ValuesOfCorrectType` because some SDKs send enum values as quoted
/// strings. Turning validation off wholesale would also stop unknown fields and arguments from
/// being reported, so a request is validated strictly first; only when every error is an
/// argument-value error is it run again with those checks skipped. Resolvers still parse every
/// value, so a wrong value is reported at execution instead. IDs sent as integer literals pass
/// strict validation already.
pub struct Lenient<Q, M, S> {
    strict: Schema<Q, M, S>,
    lenient: Schema<Q, M, S>,
}

impl<Q, M, S> Clone for Lenient<Q, M, S> {
    fn clone(&self) -> Self {
        Lenient {
            strict: self.strict.clone(),
            lenient: self.lenient.clone(),
        }
    }
}

impl<Q, M, S> Lenient<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    pub fn build(builder: impl Fn() -> SchemaBuilder<Q, M, S>) -> Self {
        Lenient {
            strict: builder().validation_mode(ValidationMode::Strict).finish(),
            lenient: builder().validation_mode(ValidationMode::Fast).finish(),
        }
    }

    /// Executes the request that `request` builds (called twice when the lenient pass runs).
    pub async fn execute(&self, request: impl Fn() -> Request) -> Response {
        let response = self.strict.execute(request()).await;
        if needs_lenient_pass(&response) {
            return self.lenient.execute(request()).await;
        }
        response
    }

    /// The schema in SDL, for documentation and compatibility checks.
    pub fn sdl(&self) -> String {
        self.strict.sdl()
    }
}

/// Strict validation failed (nothing ran) and only because of argument values.
fn needs_lenient_pass(response: &Response) -> bool {
    !response.errors.is_empty()
        && response.data == async_graphql::Value::Null
        && response
            .errors
            .iter()
            .all(|e| e.message.starts_with("Invalid value for argument"))
}

#[cfg(test)]
mod fs_tests;
#[cfg(test)]
mod tests;
