//! Fuzzes `overlay::Gossip::handle_datagram` with arbitrary datagrams, both
//! as raw bytes (which must fail authentication unless they happen to be a
//! valid sealed packet) and as arbitrary plaintext sealed with the right
//! cluster key (which reaches the decoders behind the AEAD: foca packets,
//! directory digests and records, member lists). Checks after every step:
//!
//! - nothing panics;
//! - every datagram is counted, and an authentication failure is counted
//!   exactly when the bytes do not open with the key;
//! - every datagram `Gossip` sends is at most `max_datagram` bytes and
//!   opens with the key;
//! - the directory's networks have distinct VNIs, its policies are at
//!   most `MAX_POLICIES`, each named, not empty and small enough to be
//!   sent again, and `members()` lists the local host once.
//!
//! Input: records, each starting with an op byte; its low 2 bits select
//! the operation and bits 2..4 the sender address:
//!
//! | op | operation | then |
//! | --- | --- | --- |
//! | 0 | raw datagram | length (u16 LE), bytes |
//! | 1 | plaintext, sealed with the cluster key | length (u16 LE), bytes |
//! | 2 | advance the clock and `handle_timeout` | milliseconds (u16 LE) |
//! | 3 | a local change | selector byte |
//!
//! A local change's selector byte: its low 2 bits pick publishing an
//! endpoint, withdrawing one, publishing a network, or the rest, which
//! its bits 2..4 pick: joining, leaving, publishing a policy, removing
//! one (the bits above pick the name).
//!
//! The local member is `fuzz0` at 127.0.0.1:7946 with boot generation 1,
//! the same identity as in the seed corpus (made by driving three real
//! members), so seeded foca packets are addressed to it.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use overlay::key::NonceSequence;
use overlay::directory::{Delta, MAX_DELTA_LEN, MAX_POLICIES};
use overlay::{
    ClusterKey, Gossip, GossipConfig, MemberMeta, NetVersion, NetworkSpec, PublishedEndpoint,
};

const MAX_DATAGRAM: usize = 1400;

fn meta(i: u8) -> MemberMeta {
    MemberMeta {
        name: format!("fuzz{i}"),
        gossip_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i)), 7946),
        tunnel_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i)), 4789),
        tags: BTreeMap::new(),
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn take_u16(data: &mut &[u8]) -> Option<u16> {
    take(data, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fuzz_target!(|input: &[u8]| {
    let key = ClusterKey::from_material(b"fuzz cluster key material");
    let start = Instant::now();
    let mut now = start;
    let mut config = GossipConfig::lan(3, 1);
    config.max_datagram = MAX_DATAGRAM;
    let mut gossip = Gossip::new(meta(0), key.clone(), config, 7, now).expect("valid setup");
    let mut nonces = NonceSequence::new(99, b"fuzzer");
    let mut sealed = vec![0u8; 70_000];
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut opened = vec![0u8; MAX_DATAGRAM];
    let mut data = input;
    let mut steps = 0;
    while let Some(op) = take(&mut data, 1).map(|b| b[0]) {
        steps += 1;
        if steps > 256 {
            break;
        }
        let from = meta(1 + ((op >> 2) & 3)).gossip_addr;
        let before = gossip.stats();
        match op & 3 {
            0 => {
                let Some(len) = take_u16(&mut data) else {
                    break;
                };
                let bytes = take(&mut data, usize::from(len)).unwrap_or(data);
                let authentic = key.open(bytes, &mut sealed).is_ok();
                gossip.handle_datagram(from, bytes, now);
                let after = gossip.stats();
                assert_eq!(after.datagrams_in, before.datagrams_in + 1);
                let failed = after.auth_failures - before.auth_failures;
                assert_eq!(failed, u64::from(!authentic));
            }
            1 => {
                let Some(len) = take_u16(&mut data) else {
                    break;
                };
                let plain = take(&mut data, usize::from(len)).unwrap_or(data);
                let n = key
                    .seal(&mut nonces, plain, &mut sealed)
                    .expect("buffer is large");
                gossip.handle_datagram(from, &sealed[..n], now);
                let after = gossip.stats();
                assert_eq!(after.datagrams_in, before.datagrams_in + 1);
                assert_eq!(after.auth_failures, before.auth_failures);
            }
            2 => {
                let Some(ms) = take_u16(&mut data) else { break };
                now += Duration::from_millis(u64::from(ms));
                gossip.handle_timeout(now);
                assert!(gossip.poll_timeout().is_some());
            }
            _ => {
                let Some(sel) = take(&mut data, 1).map(|b| b[0]) else {
                    break;
                };
                let n = sel >> 2;
                match sel & 3 {
                    0 => {
                        let record = PublishedEndpoint {
                            network: "netid".into(),
                            container: format!("c{n}"),
                            aliases: vec![],
                            mac: [2, 0x42, 0, 0, 0, n],
                            ipv4: Some(Ipv4Addr::new(10, 0, 0, n)),
                            ipv6: None,
                            labels: [("app".into(), format!("a{}", n % 3))].into(),
                        };
                        gossip
                            .publish_endpoint(&format!("e{n}"), record, now)
                            .expect("small record");
                    }
                    1 => {
                        gossip.remove_endpoint(&format!("e{n}"), now);
                    }
                    2 => {
                        let spec = NetworkSpec {
                            name: format!("n{}", n % 4),
                            id: format!("id{n}"),
                            ipam: vec![],
                            ipv6: false,
                            internal: false,
                            mtu: None,
                            vni: overlay::Vni::new(u32::from(n % 3)),
                            options: BTreeMap::new(),
                            labels: BTreeMap::new(),
                            created: String::new(),
                        };
                        gossip.publish_network(spec, now).expect("small spec");
                    }
                    _ => {
                        let name = format!("p{}", (n >> 2) % 4);
                        match n % 4 {
                            0 => gossip.join(meta(1).gossip_addr, now),
                            1 => gossip.leave(now),
                            2 => gossip
                                .publish_policy(&name, vec![n; usize::from(n) + 1], now)
                                .expect("small policy"),
                            _ => {
                                gossip.remove_policy(&name, now);
                            }
                        }
                    }
                }
            }
        }
        while let Some((_to, n)) = gossip.poll_transmit(&mut out) {
            assert!(n <= MAX_DATAGRAM);
            let m = key
                .open(&out[..n], &mut opened)
                .expect("our datagrams are authentic");
            assert!(m >= 1 && opened[0] <= 3, "unknown tag {}", opened[0]);
        }
        while gossip.poll_event().is_some() {}
        {
            let dir = gossip.directory();
            let vnis: Vec<_> = dir.networks().map(|n| n.vni).collect();
            let unique: HashSet<_> = vnis.iter().collect();
            assert_eq!(vnis.len(), unique.len());
            let _ = dir.endpoints().count();
            let mut policies = 0;
            for p in dir.policies() {
                policies += 1;
                assert!(!p.name.is_empty() && !p.bytes.is_empty());
                let again = Delta::Policy {
                    name: p.name.to_owned(),
                    version: NetVersion::clone(p.version),
                    policy: Some(p.bytes.to_vec()),
                };
                assert!(again.encode().len() <= MAX_DELTA_LEN);
            }
            assert!(policies <= MAX_POLICIES);
        }
        let members = gossip.members();
        assert_eq!(members.iter().filter(|m| m.local).count(), 1);
    }
});
