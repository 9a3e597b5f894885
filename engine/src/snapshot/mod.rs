//! Snapshotter: overlayfs and native (copying) snapshots of filesystem layers.
