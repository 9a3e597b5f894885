//! The Dagger-compatible engine runner.
//!
//! Layers depend in one direction only, from the bottom up:
//!
//! | layer | module | depends on |
//! |---|---|---|
//! | configuration | [`config`] | - |
//! | OCI types | [`oci`] | - |
//! | system calls (the only place for `unsafe`) | [`sys`] | - |
//! | state directory (layout, lock, backing fs) | [`state`] | config, sys |
//! | GraphQL API (thin resolvers) | [`api`] | state, oci, config |
//! | server (listeners, HTTP) | [`server`] | api, config |
//!
//! Later layers (content store, archive, snapshotter, metadata and GC, registry and git sources,
//! exec, solver) slot in between `state` and `api`; see `docs/architecture.md`.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod archive;
pub mod config;
pub mod content;
pub mod error;
pub mod exec;
pub mod gc;
pub mod git;
pub mod image;
pub mod metadata;
pub mod network;
pub mod oci;
pub mod progress;
pub mod registry;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod sockets;
pub mod solver;
pub mod state;
pub mod sys;
pub mod util;

pub use error::{Error, ErrorKind};

/// The engine's version, reported by `Query.version` and `dagger version`.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
