//! Path operations confined to a root directory (openat2 RESOLVE_IN_ROOT) for layer apply.
