//! `vswitch doctor`'s probes read whatever reaches their sockets inside a
//! container's namespace (a raw ICMP socket sees every ICMP message there,
//! and the container may forge any): ICMP and ICMPv6 messages and DNS
//! answers are read or ignored, never panic, and an answer is only ever
//! taken for the probe it names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switch::dns::{self, Answer};
use switch::wire::{self, Echo};

fuzz_target!(|data: &[u8]| {
    if let Some((_, reply)) = wire::read_icmpv4(data) {
        let _ = reply.echo();
    }
    let _ = wire::read_icmpv6(data);
    // The first two bytes are the id the query was sent with.
    if let Some(answer) = dns::read_answer(data, 0x4242, "web") {
        assert_eq!(dns::message_id(data), Some(0x4242));
        if let Answer::Addrs(a) = answer {
            assert!(a.len() <= data.len() / 4);
        }
    }
    // What the probes send always reads back as what they sent.
    let echo = Echo {
        ident: u16::from_be_bytes([data.first().copied().unwrap_or(0), 1]),
        seq: data.len() as u16,
    };
    let req = wire::echo_request_v4(echo, data.len().min(1500));
    assert_eq!(req.len(), 8 + data.len().min(1500));
});
