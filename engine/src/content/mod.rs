//! Content store: blobs by digest under `content/`, written through a verified ingest.
