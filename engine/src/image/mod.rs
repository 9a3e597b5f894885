//! Image pulls: registry → content store → layer apply → committed snapshots.
