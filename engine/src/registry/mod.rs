//! Registry client: the Registry HTTP API v2, auth, mirrors, TLS and retries.
