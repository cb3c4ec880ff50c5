//! Messages between hosts about address ownership, in `postcard`.
//!
//! The transport (gossip) treats them as opaque bytes and says which network
//! they are for; it also authenticates the sender, so these messages are
//! checked for sense (names, sizes, tokens inside the network's subnets) but
//! not for origin. Decoding never panics on any input.

use serde::{Deserialize, Serialize};

use crate::addr::Family;
use crate::cluster::table::{Entry, HostName};

/// The most entries one message may carry.
pub const MAX_ENTRIES: usize = 1 << 16;
/// The most free-space adverts one message may carry.
pub const MAX_ADVERTS: usize = 1 << 12;

/// A host's advertised free space, so others know whom to ask for a range.
/// Only the host itself writes its advert; a higher `seq` is newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Advert {
    /// Bumped by the host each time it publishes an advert or sends a request.
    pub seq: u64,
    /// Free dynamic IPv4 addresses in the ranges it owns.
    pub free_v4: u128,
    /// Free dynamic IPv6 addresses in the ranges it owns.
    pub free_v6: u128,
}

impl Advert {
    /// The free count for `family`.
    pub fn free(&self, family: Family) -> u128 {
        match family {
            Family::V4 => self.free_v4,
            Family::V6 => self.free_v6,
        }
    }
}

/// Ownership entries and adverts: a delta after a change, or a whole table
/// for anti-entropy. Applying it is idempotent and order-free.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Tokens, each with the exact end of its range.
    pub entries: Vec<Entry>,
    /// Free-space adverts, by host.
    pub adverts: Vec<(HostName, Advert)>,
}

/// `from` asks `to` for a range of `family` addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// The host that needs space.
    pub from: HostName,
    /// The host asked.
    pub to: HostName,
    /// The family needed.
    pub family: Family,
    /// The requester's advert sequence number when it asked: a donor answers
    /// each (from, seq) once and repeats the answer for duplicates.
    pub seq: u64,
}

/// `from` has no free `family` addresses for `to` (the answer to a
/// [`Request`] with the same `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decline {
    /// The host that was asked.
    pub from: HostName,
    /// The requester.
    pub to: HostName,
    /// The family asked for.
    pub family: Family,
    /// The request's sequence number.
    pub seq: u64,
}

/// Everything hosts say to each other about one network's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Ownership changes and adverts, or a whole table.
    Update(Update),
    /// A request for a range.
    Request(Request),
    /// A refused request.
    Decline(Decline),
}

/// Why bytes are not a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a message.
    #[error("ownership message is truncated")]
    Truncated,
    /// Bytes follow the message.
    #[error("ownership message has trailing bytes")]
    TrailingBytes,
    /// A field does not decode (bad tag, bad varint, bad UTF-8, a host name
    /// that [`HostName::new`] refuses).
    #[error("ownership message is malformed")]
    Malformed,
    /// More entries or adverts than [`MAX_ENTRIES`] or [`MAX_ADVERTS`].
    #[error("ownership message holds too many entries")]
    TooLarge,
}

impl Message {
    /// The message in postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing to a Vec cannot fail")
    }

    /// Parses a message; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let (msg, rest) = postcard::take_from_bytes::<Message>(bytes).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            _ => DecodeError::Malformed,
        })?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        if let Message::Update(u) = &msg {
            if u.entries.len() > MAX_ENTRIES || u.adverts.len() > MAX_ADVERTS {
                return Err(DecodeError::TooLarge);
            }
        }
        Ok(msg)
    }

    /// The host this message is meant for, if it is meant for one host only
    /// (requests and declines); updates are for every host.
    pub fn recipient(&self) -> Option<&HostName> {
        match self {
            Message::Update(_) => None,
            Message::Request(r) => Some(&r.to),
            Message::Decline(d) => Some(&d.to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn host(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Update(Update {
                entries: vec![
                    Entry {
                        start: "10.0.0.0".parse().unwrap(),
                        end: "10.0.0.63".parse().unwrap(),
                        owner: host("a"),
                        version: 3,
                    },
                    Entry {
                        start: "fd00::80".parse().unwrap(),
                        end: "fd00::ff".parse().unwrap(),
                        owner: host("b"),
                        version: u64::MAX,
                    },
                ],
                adverts: vec![(
                    host("a"),
                    Advert {
                        seq: 9,
                        free_v4: 200,
                        free_v6: u128::MAX,
                    },
                )],
            }),
            Message::Update(Update::default()),
            Message::Request(Request {
                from: host("b"),
                to: host("a"),
                family: Family::V6,
                seq: 7,
            }),
            Message::Decline(Decline {
                from: host("a"),
                to: host("b"),
                family: Family::V4,
                seq: 7,
            }),
        ]
    }

    #[test]
    fn round_trip() {
        for m in samples() {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(samples()[2].recipient().unwrap().as_str(), "a");
        assert!(samples()[0].recipient().is_none());
    }

    #[rstest]
    #[case::empty(&[], DecodeError::Truncated)]
    #[case::bad_tag(&[9], DecodeError::Malformed)]
    #[case::trailing(&[0, 0, 0, 0], DecodeError::TrailingBytes)]
    // A request whose `from` is the empty string.
    #[case::empty_name(&[1, 0, 1, b'a', 0, 0], DecodeError::Malformed)]
    // An update claiming 2^32 entries in 5 bytes.
    #[case::huge_len(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f], DecodeError::Truncated)]
    fn decode_refuses(#[case] bytes: &[u8], #[case] expected: DecodeError) {
        assert_eq!(Message::decode(bytes).unwrap_err(), expected);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..4,
            flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
            cut in any::<u16>(),
        ) {
            let mut bytes = samples()[which].encode();
            for (at, x) in flips {
                let i = usize::from(at) % bytes.len();
                bytes[i] ^= x;
            }
            let _ = Message::decode(&bytes);
            let cut = usize::from(cut) % (bytes.len() + 1);
            let _ = Message::decode(&bytes[..cut]);
        }
    }
}
