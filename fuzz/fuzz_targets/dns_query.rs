//! Fuzzes `switch::dns::Responder::handle_query` (and the message helpers
//! the gateway uses on upstream replies) with arbitrary bytes, and checks:
//!
//! - an answer fits the transport: at most the UDP payload the frame carries
//!   (and never more than `out`), or a TCP message;
//! - an answer is a response (QR set) with the query's transaction id;
//! - nothing panics, whatever the bytes.
//!
//! Input: one selector byte, then the DNS message. The selector's low bit
//! picks TCP or UDP; for UDP the other bits pick the frame's UDP payload
//! limit (512 to 1532 bytes).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switch::dns::{self, DnsEntry, ErrorReply, Outcome, Responder, Transport, Zone};

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut entries: Vec<DnsEntry> = (0..32u8)
            .map(|i| DnsEntry {
                name: format!("c{i}"),
                aliases: vec![format!("svc{}", i % 4), "pool".into()],
                addrs: vec![
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))),
                ],
            })
            .collect();
        entries.push(DnsEntry {
            name: "web".into(),
            aliases: vec!["WWW.Example".into()],
            addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))],
        });
        Zone::new(entries)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, query)) = data.split_first() else {
        return;
    };
    let transport = if selector & 1 == 1 {
        Transport::Tcp
    } else {
        Transport::Udp {
            max_payload: 512 + u16::from(selector >> 1) * 8,
        }
    };
    let mut responder = Responder::new();
    let mut out = vec![0u8; 65535];
    // Twice: the second answer goes through the round-robin state.
    for _ in 0..2 {
        match responder.handle_query(zone(), query, transport, &mut out) {
            Outcome::Answered(n) => {
                if let Transport::Udp { max_payload } = transport {
                    assert!(n <= usize::from(max_payload), "{n} > {max_payload}");
                }
                let answer = &out[..n];
                assert!(dns::is_response(answer));
                assert_eq!(dns::message_id(answer), dns::message_id(query));
            }
            Outcome::Forward { max_reply } => {
                assert!(max_reply >= 512 || matches!(transport, Transport::Udp { .. }));
            }
            Outcome::Ignore => {}
        }
    }
    let mut small = [0u8; 512];
    if let Some(n) = responder.reply_error(query, ErrorReply::ServFail, transport, &mut small) {
        assert!(dns::is_response(&small[..n]));
        assert_eq!(dns::message_id(&small[..n]), dns::message_id(query));
    }
    if let Some(n) = dns::truncate_reply(query, 512, &mut small) {
        assert!(n <= 512);
    }
    let _ = dns::same_question(query, query);
});
