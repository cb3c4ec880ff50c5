//! Small handle and address types shared by every module of the core.

use std::fmt;
use std::str::FromStr;

/// A port of the switch: a TAP endpoint, a network's gateway, or (later) a
/// tunnel. A small index, never a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// A bridge domain. Frames never cross from one `NetworkId` to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub u32);

/// An IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group addresses (broadcast and multicast): the I/G bit.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A locally administered unicast address derived from `seed` bytes
    /// (stable for the same seed), as Docker derives MACs from addresses.
    pub fn local_from_seed(seed: &[u8]) -> MacAddr {
        // FNV-1a 64: stable across releases, no dependency.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in seed {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        let b = h.to_be_bytes();
        MacAddr([0x02, 0x42, b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a MAC address is six hex bytes separated by colons, like 02:42:ac:11:00:02")]
pub struct ParseMacError;

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or(ParseMacError)?;
            if p.len() != 2 {
                return Err(ParseMacError);
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(MacAddr(out))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip() {
        let m: MacAddr = "02:42:ac:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert!(!m.is_multicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!("02:42:ac:11:00".parse::<MacAddr>().is_err());
        assert!("02:42:ac:11:00:02:03".parse::<MacAddr>().is_err());
        assert!("zz:42:ac:11:00:02".parse::<MacAddr>().is_err());
    }

    #[test]
    fn seeded_mac_is_local_unicast() {
        let m = MacAddr::local_from_seed(b"10.0.0.2");
        assert_eq!(m.0[0] & 0x03, 0x02);
        assert_eq!(m, MacAddr::local_from_seed(b"10.0.0.2"));
    }
}
