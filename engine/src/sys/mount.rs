//! Mounts: overlay (with the new mount API for long lower-dir lists), bind and unmount.
