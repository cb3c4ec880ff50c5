//! vswitch CLI and daemon library (in progress).
