//! Helpers the unit tests share.

use std::net::IpAddr;

use ipnet::IpNet;

/// An address from its text; panics on a typo in the test.
pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A prefix from its text; panics on a typo in the test.
pub(crate) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
