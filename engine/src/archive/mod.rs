//! Layer apply: OCI/Docker layer tars applied inside a root, whatever the links and whiteouts.
