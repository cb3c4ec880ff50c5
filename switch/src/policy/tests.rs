//! The policy core against a small world: two networks, an isolated one,
//! their containers, and packets between them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::flows::{TCP_ESTABLISHED, TCP_OPENING, UNREPLIED};
use super::packet::{tcp, Kind};
use super::*;
use crate::{MacAddr, NetworkId};

const FRONT: NetworkId = NetworkId(1);
const BACK: NetworkId = NetworkId(2);
const ISO: NetworkId = NetworkId(3);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn networks() -> Vec<NetworkInput> {
    let net = |id, name: &str, subnet: &str, isolate, l: &[(&str, &str)]| NetworkInput {
        id,
        name: name.into(),
        labels: labels(l),
        subnets: vec![subnet.parse().unwrap()],
        isolate,
        gateway_mac: MacAddr([2, 0, 0, 0, 0, id.0 as u8]),
    };
    vec![
        net(FRONT, "front", "10.0.0.0/24", false, &[("tier", "edge")]),
        net(BACK, "back", "10.1.0.0/24", false, &[("tier", "data")]),
        net(ISO, "iso", "10.2.0.0/24", true, &[]),
    ]
}

/// web (front), db and cache (back), a, b and c (iso).
fn endpoints() -> Vec<EndpointInput> {
    let ep = |network, name: &str, ip: [u8; 4], l: &[(&str, &str)]| EndpointInput {
        network,
        container: name.into(),
        labels: labels(l),
        mac: MacAddr([2, 1, ip[1], ip[2], ip[3], 0]),
        ips: vec![IpAddr::from(ip)],
    };
    vec![
        ep(FRONT, "web", [10, 0, 0, 2], &[("app", "web")]),
        ep(FRONT, "admin", [10, 0, 0, 9], &[("app", "admin")]),
        ep(BACK, "db", [10, 1, 0, 3], &[("app", "db")]),
        ep(BACK, "cache", [10, 1, 0, 4], &[("app", "cache")]),
        ep(ISO, "a", [10, 2, 0, 2], &[("role", "client")]),
        ep(ISO, "b", [10, 2, 0, 3], &[("role", "server")]),
        ep(ISO, "c", [10, 2, 0, 4], &[]),
    ]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allow(name: &str, from: &str, to: &str, ports: &[&str]) -> Policy {
    Policy {
        name: name.into(),
        rule: Rule::Allow {
            from: Peer::parse(from).unwrap(),
            to: Peer::parse(to).unwrap(),
            ports: ports.iter().map(|p| PortRange::parse(p).unwrap()).collect(),
        },
    }
}

fn egress(network: &str, action: EgressAction, cidr: &str, ports: &[&str]) -> Policy {
    let cidr = cidr.parse().unwrap();
    let ports: Vec<PortRange> = ports.iter().map(|p| PortRange::parse(p).unwrap()).collect();
    Policy {
        name: Policy::egress_name(network, action, &cidr, &ports),
        rule: Rule::Egress {
            network: network.into(),
            action,
            cidr,
            ports,
        },
    }
}

fn table(policies: &[Policy]) -> PolicyTable {
    PolicyTable::compile(1, policies, &networks(), &endpoints())
}

/// A TCP packet's tuple (no frame needed: the table and flows read only
/// the fields).
fn tcp_pkt(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> FlowPacket {
    FlowPacket {
        src: ip(src),
        dst: ip(dst),
        proto: 6,
        sport,
        dport,
        tcp_flags: flags,
        kind: Kind::Flow,
        ttl_at: 22,
    }
}

fn udp_pkt(src: &str, sport: u16, dst: &str, dport: u16) -> FlowPacket {
    FlowPacket {
        proto: 17,
        tcp_flags: 0,
        ..tcp_pkt(src, sport, dst, dport, 0)
    }
}

/// Who each side of `pkt` is, as the datapath asks: the source on the
/// network it came from, the destination on its own or routed.
fn sides(t: &PolicyTable, from: NetworkId, pkt: &FlowPacket) -> (Who, Who) {
    let dnet = t.routed_network(from, pkt.dst).unwrap_or(from);
    (t.identify(from, pkt.src), t.identify(dnet, pkt.dst))
}

fn verdict(t: &PolicyTable, from: NetworkId, pkt: &FlowPacket) -> Verdict {
    let (s, d) = sides(t, from, pkt);
    t.check(s, d, pkt.proto, pkt.dport)
}

fn judge(
    flows: &mut Flows,
    t: &PolicyTable,
    from: NetworkId,
    pkt: &FlowPacket,
    now: Instant,
) -> FlowVerdict {
    let (s, d) = sides(t, from, pkt);
    flows.check(t, pkt, s, d, now)
}

fn name_of(t: &PolicyTable, v: Verdict) -> Option<&str> {
    match v {
        Verdict::Allow => None,
        Verdict::Deny(n) => Some(t.name(n)),
    }
}

#[test]
fn nothing_crosses_between_networks_unless_allowed() {
    let t = table(&[]);
    let syn = tcp_pkt("10.0.0.2", 40000, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(t.routed_network(FRONT, syn.dst), Some(BACK));
    assert_eq!(t.routed_network(FRONT, ip("10.0.0.9")), None, "on-link");
    assert_eq!(t.routed_network(FRONT, ip("192.0.2.1")), None, "outside");
    assert_eq!(name_of(&t, verdict(&t, FRONT, &syn)), Some("default-deny"));
    // Inside a plain network everything passes.
    let local = tcp_pkt("10.1.0.4", 40000, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(verdict(&t, BACK, &local), Verdict::Allow);
}

#[test]
fn an_allowed_port_opens_and_nothing_else_does() {
    let t = table(&[allow("web-db", "front/web", "back/db", &["6379"])]);
    let ok = tcp_pkt("10.0.0.2", 40000, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(verdict(&t, FRONT, &ok), Verdict::Allow);
    let other_port = tcp_pkt("10.0.0.2", 40000, "10.1.0.3", 22, tcp::SYN);
    assert_eq!(
        name_of(&t, verdict(&t, FRONT, &other_port)),
        Some("default-deny")
    );
    let udp = udp_pkt("10.0.0.2", 40000, "10.1.0.3", 6379);
    assert!(
        matches!(verdict(&t, FRONT, &udp), Verdict::Deny(_)),
        "TCP only"
    );
    let other_source = tcp_pkt("10.0.0.9", 40000, "10.1.0.3", 6379, tcp::SYN);
    assert!(matches!(
        verdict(&t, FRONT, &other_source),
        Verdict::Deny(_)
    ));
    let other_dest = tcp_pkt("10.0.0.2", 40000, "10.1.0.4", 6379, tcp::SYN);
    assert!(matches!(verdict(&t, FRONT, &other_dest), Verdict::Deny(_)));
    let backwards = tcp_pkt("10.1.0.3", 6379, "10.0.0.2", 40000, tcp::SYN);
    assert!(matches!(verdict(&t, BACK, &backwards), Verdict::Deny(_)));
}

#[test]
fn replies_pass_and_the_other_side_cannot_open() {
    let t = table(&[allow("web-db", "front", "back/label=app=db", &["6379"])]);
    let mut flows = Flows::default();
    let now = Instant::now();
    let syn = tcp_pkt("10.0.0.2", 40000, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(
        judge(&mut flows, &t, FRONT, &syn, now),
        FlowVerdict::Pass(true)
    );
    let synack = tcp_pkt("10.1.0.3", 6379, "10.0.0.2", 40000, tcp::SYN | tcp::ACK);
    assert_eq!(
        judge(&mut flows, &t, BACK, &synack, now),
        FlowVerdict::Pass(false)
    );
    assert_eq!(flows.len(), 1);
    // db opening a connection of its own to web: denied, no flow made.
    let open = tcp_pkt("10.1.0.3", 6379, "10.0.0.2", 40001, tcp::SYN);
    assert!(matches!(
        judge(&mut flows, &t, BACK, &open, now),
        FlowVerdict::Deny(_)
    ));
    let udp = udp_pkt("10.1.0.3", 6379, "10.0.0.2", 40000);
    assert!(matches!(
        judge(&mut flows, &t, BACK, &udp, now),
        FlowVerdict::Deny(_)
    ));
    assert_eq!(flows.len(), 1);
    // An ICMP error about the admitted flow passes; about another, not.
    let related = FlowPacket {
        kind: Kind::Related,
        ..tcp_pkt("10.1.0.3", 6379, "10.0.0.2", 40000, 0)
    };
    assert_eq!(
        judge(&mut flows, &t, BACK, &related, now),
        FlowVerdict::Pass(false)
    );
    let unrelated = FlowPacket {
        kind: Kind::Related,
        ..tcp_pkt("10.1.0.3", 6379, "10.0.0.2", 40009, 0)
    };
    assert!(matches!(
        judge(&mut flows, &t, BACK, &unrelated, now),
        FlowVerdict::Deny(_)
    ));
}

#[test]
fn an_isolated_network_passes_only_the_allowed_pair() {
    let t = table(&[allow("a-b", "iso/label=role=client", "iso/b", &["80"])]);
    let ab = tcp_pkt("10.2.0.2", 1000, "10.2.0.3", 80, tcp::SYN);
    assert_eq!(verdict(&t, ISO, &ab), Verdict::Allow);
    assert!(t.network(ISO).unwrap().checked);
    assert!(!t.network(FRONT).unwrap().checked);
    for (src, dst, port) in [
        ("10.2.0.2", "10.2.0.4", 80),
        ("10.2.0.4", "10.2.0.3", 80),
        ("10.2.0.2", "10.2.0.3", 81),
    ] {
        let p = tcp_pkt(src, 1000, dst, port, tcp::SYN);
        assert_eq!(
            name_of(&t, verdict(&t, ISO, &p)),
            Some("isolate"),
            "{src} -> {dst}:{port}"
        );
    }
    // A broadcast is nobody's: dropped in an isolated network.
    let bcast = udp_pkt("10.2.0.2", 68, "10.2.0.255", 67);
    assert_eq!(name_of(&t, verdict(&t, ISO, &bcast)), Some("isolate"));
}

#[test]
fn egress_rules_take_the_longest_prefix_and_deny_breaks_ties() {
    let t = table(&[
        egress("front", EgressAction::Deny, "0.0.0.0/0", &[]),
        egress("front", EgressAction::Allow, "198.51.100.0/24", &[]),
        egress("front", EgressAction::Deny, "198.51.100.7/32", &[]),
        egress("front", EgressAction::Allow, "198.51.100.7/32", &["443"]),
        egress("back", EgressAction::Deny, "203.0.113.0/24", &["53/udp"]),
        egress("back", EgressAction::Allow, "203.0.113.0/24", &["53/udp"]),
    ]);
    let src = ip("10.0.0.2");
    let check = |net, dst: &str, proto, port| t.check_egress(net, src, ip(dst), proto, port);
    assert!(matches!(check(FRONT, "192.0.2.1", 6, 80), Verdict::Deny(_)));
    assert_eq!(check(FRONT, "198.51.100.9", 6, 80), Verdict::Allow);
    assert!(matches!(
        check(FRONT, "198.51.100.7", 6, 80),
        Verdict::Deny(_)
    ));
    assert_eq!(
        check(FRONT, "198.51.100.7", 6, 443),
        Verdict::Allow,
        "ports are more specific"
    );
    let src = ip("10.1.0.3");
    let check = |net, dst: &str, proto, port| t.check_egress(net, src, ip(dst), proto, port);
    assert!(
        matches!(check(BACK, "203.0.113.5", 17, 53), Verdict::Deny(_)),
        "a tie: deny"
    );
    assert_eq!(check(BACK, "203.0.113.5", 6, 53), Verdict::Allow);
    assert_eq!(
        check(BACK, "192.0.2.1", 17, 53),
        Verdict::Allow,
        "default allow"
    );
    match check(BACK, "203.0.113.5", 17, 53) {
        Verdict::Deny(n) => assert_eq!(t.name(n), "back-egress-deny-203.0.113.0-24-53-udp"),
        v => panic!("{v:?}"),
    }
}

fn k8s(name: &str, np: NetworkPolicy) -> Policy {
    Policy {
        name: name.into(),
        rule: Rule::Kubernetes(np),
    }
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: vec![],
    }
}

#[test]
fn a_networkpolicy_isolates_what_it_selects() {
    // db takes connections only from cache, on 6379; front reaches it
    // through a namespace selector.
    let np = NetworkPolicy {
        network: "back".into(),
        pod_selector: sel(&[("app", "db")]),
        ingress: Some(vec![K8sRule {
            peers: vec![
                K8sPeer::Pods {
                    networks: None,
                    pods: Some(sel(&[("app", "cache")])),
                },
                K8sPeer::Pods {
                    networks: Some(sel(&[("tier", "edge")])),
                    pods: Some(sel(&[("app", "web")])),
                },
            ],
            ports: vec![PortRange::parse("6379").unwrap()],
        }]),
        egress: None,
    };
    let t = table(&[k8s("db-ingress", np)]);
    assert!(t.network(BACK).unwrap().checked);
    let cache_db = tcp_pkt("10.1.0.4", 1, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(verdict(&t, BACK, &cache_db), Verdict::Allow);
    let cache_db_22 = tcp_pkt("10.1.0.4", 1, "10.1.0.3", 22, tcp::SYN);
    assert_eq!(
        name_of(&t, verdict(&t, BACK, &cache_db_22)),
        Some("db-ingress")
    );
    let web_db = tcp_pkt("10.0.0.2", 1, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(
        verdict(&t, FRONT, &web_db),
        Verdict::Allow,
        "named across networks"
    );
    let admin_db = tcp_pkt("10.0.0.9", 1, "10.1.0.3", 6379, tcp::SYN);
    assert!(matches!(verdict(&t, FRONT, &admin_db), Verdict::Deny(_)));
    // cache is not selected: db reaches it.
    let db_cache = tcp_pkt("10.1.0.3", 1, "10.1.0.4", 9, tcp::SYN);
    assert_eq!(verdict(&t, BACK, &db_cache), Verdict::Allow);
    // DNS: front may resolve db, not cache.
    let reach = t.reachable();
    assert_eq!(
        reach
            .get(&FRONT)
            .map(|s| s.iter().copied().collect::<Vec<_>>()),
        Some(vec![2])
    );
}

#[test]
fn an_empty_ingress_list_denies_everything_and_from_everyone_stays_in_the_network() {
    let deny_all = NetworkPolicy {
        network: "back".into(),
        pod_selector: LabelSelector::default(),
        ingress: Some(vec![]),
        egress: None,
    };
    let t = table(&[k8s("default-deny-back", deny_all)]);
    let p = tcp_pkt("10.1.0.4", 1, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(
        name_of(&t, verdict(&t, BACK, &p)),
        Some("default-deny-back")
    );
    let open_all = NetworkPolicy {
        network: "back".into(),
        pod_selector: LabelSelector::default(),
        ingress: Some(vec![K8sRule {
            peers: vec![],
            ports: vec![],
        }]),
        egress: None,
    };
    let t = table(&[k8s("open", open_all)]);
    assert_eq!(verdict(&t, BACK, &p), Verdict::Allow);
    let web_db = tcp_pkt("10.0.0.2", 1, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(
        name_of(&t, verdict(&t, FRONT, &web_db)),
        Some("default-deny")
    );
    assert!(t.reachable().is_empty());
}

#[test]
fn a_networkpolicy_egress_rule_limits_what_leaves() {
    let np = NetworkPolicy {
        network: "front".into(),
        pod_selector: sel(&[("app", "web")]),
        ingress: None,
        egress: Some(vec![K8sRule {
            peers: vec![K8sPeer::IpBlock {
                cidr: "198.51.100.0/24".parse().unwrap(),
                except: vec!["198.51.100.128/25".parse().unwrap()],
            }],
            ports: vec![],
        }]),
    };
    let t = table(&[k8s("web-out", np)]);
    let web = ip("10.0.0.2");
    assert_eq!(
        t.check_egress(FRONT, web, ip("198.51.100.1"), 6, 443),
        Verdict::Allow
    );
    assert!(matches!(
        t.check_egress(FRONT, web, ip("198.51.100.200"), 6, 443),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        t.check_egress(FRONT, web, ip("192.0.2.1"), 6, 443),
        Verdict::Deny(_)
    ));
    // admin is not selected.
    assert_eq!(
        t.check_egress(FRONT, ip("10.0.0.9"), ip("192.0.2.1"), 6, 443),
        Verdict::Allow
    );
    // web is egress-isolated inside its network too.
    let p = tcp_pkt("10.0.0.2", 1, "10.0.0.9", 80, tcp::SYN);
    assert_eq!(name_of(&t, verdict(&t, FRONT, &p)), Some("web-out"));
}

#[test]
fn a_new_table_cuts_flows_it_no_longer_admits() {
    let policy = allow("web-db", "front/web", "back/db", &["6379"]);
    let t1 = table(std::slice::from_ref(&policy));
    let mut flows = Flows::default();
    let now = Instant::now();
    let syn = tcp_pkt("10.0.0.2", 40000, "10.1.0.3", 6379, tcp::SYN);
    assert_eq!(
        judge(&mut flows, &t1, FRONT, &syn, now),
        FlowVerdict::Pass(true)
    );
    // Recompiled with the same policy: the flow stays.
    let t2 = PolicyTable::compile(2, std::slice::from_ref(&policy), &networks(), &endpoints());
    let reply = tcp_pkt("10.1.0.3", 6379, "10.0.0.2", 40000, tcp::ACK);
    assert_eq!(
        judge(&mut flows, &t2, BACK, &reply, now),
        FlowVerdict::Pass(false)
    );
    // The policy removed: the next packet, either way, is cut.
    let t3 = PolicyTable::compile(3, &[], &networks(), &endpoints());
    assert!(matches!(
        judge(&mut flows, &t3, BACK, &reply, now),
        FlowVerdict::Deny(_)
    ));
    assert_eq!(flows.len(), 0);
    assert_eq!(flows.stats().revoked, 1);
}

#[test]
fn flows_age_by_state_and_the_table_is_bounded() {
    let t = table(&[allow("all", "front", "back", &[])]);
    let mut flows = Flows::new(4);
    let t0 = Instant::now();
    let syn = tcp_pkt("10.0.0.2", 1, "10.1.0.3", 80, tcp::SYN);
    judge(&mut flows, &t, FRONT, &syn, t0);
    // Unanswered: gone after TCP_OPENING; the reply then counts as new.
    let late = tcp_pkt("10.1.0.3", 80, "10.0.0.2", 1, tcp::SYN | tcp::ACK);
    let after = t0 + TCP_OPENING + Duration::from_secs(1);
    assert!(matches!(
        judge(&mut flows, &t, BACK, &late, after),
        FlowVerdict::Deny(_)
    ));
    // Answered: kept for TCP_ESTABLISHED of idleness.
    judge(&mut flows, &t, FRONT, &syn, t0);
    judge(&mut flows, &t, BACK, &late, t0);
    let ack = tcp_pkt("10.1.0.3", 80, "10.0.0.2", 1, tcp::ACK);
    let idle = t0 + TCP_ESTABLISHED - Duration::from_secs(1);
    assert_eq!(
        judge(&mut flows, &t, BACK, &ack, idle),
        FlowVerdict::Pass(false)
    );
    // UDP unanswered: UNREPLIED.
    let udp = udp_pkt("10.0.0.2", 5, "10.1.0.3", 53);
    judge(&mut flows, &t, FRONT, &udp, t0);
    flows.handle_timeout(t0 + UNREPLIED + Duration::from_secs(10));
    assert_eq!(flows.len(), 1, "the UDP flow swept, the TCP one kept");
    // Bounded: four flows, then Full until some expire.
    for port in 10..13 {
        let p = udp_pkt("10.0.0.2", port, "10.1.0.3", 53);
        assert_eq!(
            judge(&mut flows, &t, FRONT, &p, idle),
            FlowVerdict::Pass(true)
        );
    }
    let p = udp_pkt("10.0.0.2", 99, "10.1.0.3", 53);
    assert_eq!(judge(&mut flows, &t, FRONT, &p, idle), FlowVerdict::Full);
    assert_eq!(flows.stats().full, 1);
    let later = idle + UNREPLIED + Duration::from_secs(1);
    assert_eq!(
        judge(&mut flows, &t, FRONT, &p, later),
        FlowVerdict::Pass(true)
    );
}

#[test]
fn neighbour_discovery_always_passes() {
    let t = table(&[]);
    let mut flows = Flows::default();
    let nd = FlowPacket {
        proto: 58,
        kind: Kind::Link,
        ..udp_pkt("10.2.0.2", 0, "10.2.0.3", 0)
    };
    assert_eq!(
        judge(&mut flows, &t, ISO, &nd, Instant::now()),
        FlowVerdict::Pass(false)
    );
}

fn arb_pkt() -> impl Strategy<Value = (bool, u16, u16, u8, bool)> {
    // (from web?, web's port, db's port, tcp flags, udp?)
    (
        any::<bool>(),
        40000u16..40004,
        prop_oneof![Just(6379u16), Just(22u16)],
        any::<u8>(),
        any::<bool>(),
    )
}

proptest! {
    /// A packet from db to web passes only while a flow web opened to
    /// db:6379 lives; web's packets pass only to 6379; both directions of
    /// a flow have the same key.
    #[test]
    fn db_speaks_only_in_flows_web_opened(seq in proptest::collection::vec((arb_pkt(), 0u64..200), 1..60)) {
        let t = table(&[allow("web-db", "front/web", "back/db", &["6379", "6379/udp"])]);
        let mut flows = Flows::default();
        let mut now = Instant::now();
        // Flows web opened, by (proto, web port, db port): when they expire
        // at the latest.
        let mut opened: BTreeMap<(u8, u16, u16), Instant> = BTreeMap::new();
        for ((from_web, wport, dport, flags, udp), wait) in seq {
            now += Duration::from_secs(wait);
            let proto = if udp { 17 } else { 6 };
            let pkt = if from_web {
                FlowPacket { proto, tcp_flags: if udp { 0 } else { flags }, ..tcp_pkt("10.0.0.2", wport, "10.1.0.3", dport, 0) }
            } else {
                FlowPacket { proto, tcp_flags: if udp { 0 } else { flags }, ..tcp_pkt("10.1.0.3", dport, "10.0.0.2", wport, 0) }
            };
            let back = FlowPacket { src: pkt.dst, dst: pkt.src, sport: pkt.dport, dport: pkt.sport, ..pkt };
            prop_assert_eq!(FlowKey::of(&pkt).0, FlowKey::of(&back).0);
            let net = if from_web { FRONT } else { BACK };
            let v = judge(&mut flows, &t, net, &pkt, now);
            let key = (proto, wport, dport);
            let live = opened.get(&key).is_some_and(|until| *until > now);
            if from_web && dport == 6379 {
                prop_assert!(matches!(v, FlowVerdict::Pass(_)));
                opened.insert(key, now + TCP_ESTABLISHED);
            } else if from_web {
                prop_assert!(matches!(v, FlowVerdict::Deny(_)));
            } else if !live {
                prop_assert!(matches!(v, FlowVerdict::Deny(_)), "db spoke first: {:?}", pkt);
            }
        }
    }
}
