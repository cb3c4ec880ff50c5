//! Sandboxes for `vswitch run` (in progress).
