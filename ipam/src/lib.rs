//! IP address management (in progress).
#![deny(unsafe_code)]
