//! Network namespaces and TAP endpoints (in progress).
