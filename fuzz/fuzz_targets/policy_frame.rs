//! The policy core reads every frame that crosses between networks or
//! inside an isolated one, as the container sent it: whatever the bytes,
//! the tuple is read or refused without a panic, and the flow table never
//! lets a packet pass in a direction the policies deny unless a flow
//! opened in the allowed one.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switch::policy::{
    EndpointInput, FlowPacket, FlowVerdict, Flows, NetworkInput, Peer, Policy, PolicyTable,
    PortRange, Rule, Verdict,
};
use switch::{MacAddr, NetworkId};

fn table() -> &'static PolicyTable {
    static TABLE: OnceLock<PolicyTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let net = |id: u32, name: &str, subnet: &str, isolate| NetworkInput {
            id: NetworkId(id),
            name: name.into(),
            labels: BTreeMap::new(),
            subnets: vec![subnet.parse().unwrap()],
            isolate,
            gateway_mac: MacAddr([2, 0, 0, 0, 0, id as u8]),
        };
        let ep = |id: u32, name: &str, ip: &str| EndpointInput {
            network: NetworkId(id),
            container: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            mac: MacAddr([2, 1, 0, 0, 0, id as u8]),
            ips: vec![ip.parse().unwrap()],
        };
        let policy = Policy {
            name: "web-db".into(),
            rule: Rule::Allow {
                from: Peer::parse("front").unwrap(),
                to: Peer::parse("back/label=app=db").unwrap(),
                ports: vec![PortRange::parse("6379").unwrap()],
            },
        };
        PolicyTable::compile(
            1,
            &[policy],
            &[net(1, "front", "10.0.0.0/24", false), net(2, "back", "10.1.0.0/24", true)],
            &[
                ep(1, "web", "10.0.0.2"),
                ep(2, "db", "10.1.0.3"),
                ep(2, "cache", "10.1.0.4"),
            ],
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let t = table();
    let mut flows = Flows::new(64);
    let now = Instant::now();
    // The input is a run of frames, each behind a two-byte length.
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        step += 1;
        let Some(pkt) = FlowPacket::parse(frame) else {
            continue;
        };
        assert!(pkt.ttl_at < frame.len());
        let net = if matches!(pkt.src, IpAddr::V4(a) if a.octets()[2] == 1) {
            NetworkId(2)
        } else {
            NetworkId(1)
        };
        let dnet = t.routed_network(net, pkt.dst).unwrap_or(net);
        let src = t.identify(net, pkt.src);
        let dst = t.identify(dnet, pkt.dst);
        let at = now + Duration::from_millis(step);
        let verdict = flows.check(t, &pkt, src, dst, at);
        // db and cache never open anything towards web.
        if src.ep == Some(1) || src.ep == Some(2) {
            if dst.ep == Some(0) && t.check(src, dst, pkt.proto, pkt.dport) == Verdict::Allow {
                panic!("the table lets back open a flow to front");
            }
        }
        if let FlowVerdict::Pass(true) = verdict {
            assert_eq!(t.check(src, dst, pkt.proto, pkt.dport), Verdict::Allow);
        }
    }
});
