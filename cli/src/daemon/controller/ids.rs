//! Ids and timestamps of networks, containers and endpoints, from kept
//! crates: 256 random bits from the OS (`getrandom`) as 64 hex digits
//! (`hex`), the shape of Docker's ids; RFC 3339 in UTC (`humantime`).

use std::time::SystemTime;

/// 32 random bytes as 64 lowercase hex digits, as Docker's ids.
pub(super) fn random_id() -> String {
    hex::encode(random_bytes::<32>())
}

/// A random seed (for the gateways', NATs' and gossip's own generators).
pub(super) fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS generator fails only on a kernel without getrandom(2) and
    // without /dev/urandom, where no container runtime runs either.
    getrandom::fill(&mut b).expect("the operating system's random number generator");
    b
}

/// Now, as RFC 3339 in UTC to the second (Docker's `Created` shape).
pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
