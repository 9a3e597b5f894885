//! Metadata: the SQLite database of blobs, images, snapshots and leases.
