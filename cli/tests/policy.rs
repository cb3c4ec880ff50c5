//! Policies end to end on real namespaces: routed, stateful traffic
//! between networks that a policy allows and nothing else, isolated
//! networks, egress rules against a "world" namespace of the test's own,
//! and policies that survive a restart. Real clients and servers (socat,
//! dig); traffic stays inside the namespaces the tests make.

mod common;

use std::time::Duration;

use common::*;

/// `vswitch trace ... --format json`, whatever its exit status (1 when
/// the frame would be dropped).
fn trace(h: &Host, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["trace"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--format", "json"]);
    let o = h.vs(&argv);
    serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("trace {args:?}: {e}: {}{}", stdout(&o), stderr(&o)))
}

fn denied(h: &Host, name: &str) -> u64 {
    let stats = h.vs_json(&["stats", "--json"]);
    stats["PolicyDenied"][name].as_u64().unwrap_or(0)
}

#[test]
fn front_reaches_the_allowed_port_of_db_on_another_network_and_nothing_else() {
    require_root!();
    let mut h = Host::start(&[]);
    let front = h.network("front", &["--subnet", "10.240.1.0/24"]);
    let back = h.network("back", &["--subnet", "10.240.2.0/24"]);
    let web = h.run("web", &front, &[]);
    let db = h.run("db", &back, &["--label", "app=db"]);
    let cache = h.run("cache", &back, &["--label", "app=cache"]);
    let web_ip = h.ip_of(&web, &front);
    let db_ip = h.ip_of(&db, &back);
    let cache_ip = h.ip_of(&cache, &back);
    let _redis = peer_echo_tcp(&db, 6379);
    let _ssh = peer_echo_tcp(&db, 2222);
    let _cache = peer_echo_tcp(&cache, 6379);
    let _web = peer_echo_tcp(&web, 8080);

    // Nothing crosses before a policy says so.
    let (ok, out) = tcp_exchange(&web, &db_ip, 6379);
    assert!(!ok, "crossed without a policy: {out}");
    assert!(
        resolves(&web, "10.240.1.1", &db).is_none(),
        "db resolves in front"
    );

    let name = h.vs_ok(&[
        "policy",
        "allow",
        "--from",
        &front,
        "--to",
        &format!("{back}/label=app=db"),
        "--port",
        "6379",
        "--name",
        "web-db",
    ]);
    assert_eq!(name.trim(), "web-db");

    // Routed by the gateways, the server sees the client's own address.
    let (ok, out) = tcp_exchange_within(&web, &db_ip, 6379);
    assert!(ok, "the allowed port: {out}\n{}", tail(&h.log(), 30));
    assert!(out.contains(&format!("peer={web_ip}")), "{out}");
    // db's name resolves in front now; cache's does not.
    assert_eq!(
        resolves(&web, "10.240.1.1", &db).as_deref(),
        Some(db_ip.as_str())
    );
    assert!(resolves(&web, "10.240.1.1", &cache).is_none());

    // Another port of db, another container of back, and db opening a
    // connection of its own to web: all dropped, counted.
    let before = denied(&h, "default-deny");
    assert!(!tcp_exchange(&web, &db_ip, 2222).0, "db:2222 reached");
    assert!(!tcp_exchange(&web, &cache_ip, 6379).0, "cache reached");
    assert!(
        !tcp_exchange(&db, &web_ip, 8080).0,
        "db opened a connection to web"
    );
    assert!(denied(&h, "default-deny") > before);

    // trace says the same, sending nothing.
    let t = trace(
        &h,
        &[
            "--from", &web, "--to", &db_ip, "--proto", "tcp", "--port", "2222",
        ],
    );
    assert_eq!(t["Verdict"]["Action"], "dropped", "{t}");
    assert_eq!(t["Verdict"]["Policy"], "default-deny", "{t}");
    let t = trace(
        &h,
        &[
            "--from", &web, "--to", &db, "--proto", "tcp", "--port", "6379",
        ],
    );
    assert_eq!(t["Verdict"]["Action"], "delivered", "{t}");

    // ls and inspect show it; a different rule under the same name is
    // refused, the same one again is fine.
    let ls = h.vs_json(&["policy", "ls", "--format", "json"]);
    assert_eq!(ls[0]["Name"], "web-db");
    assert_eq!(ls[0]["Kind"], "allow");
    assert!(h.vs_json(&["network", "inspect", &back])[0]["Policies"]
        .as_array()
        .is_some_and(|p| p.iter().any(|n| n == "web-db")));
    let o = h.vs(&[
        "policy", "allow", "--from", &front, "--to", &back, "--name", "web-db",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // After a restart the policy is still in force.
    h.restart();
    let (ok, out) = tcp_exchange_within(&web, &db_ip, 6379);
    assert!(ok, "after a restart: {out}\n{}", tail(&h.log(), 30));
    assert!(!tcp_exchange(&web, &db_ip, 2222).0);

    // Removed: nothing crosses again.
    h.vs_ok(&["policy", "rm", "web-db"]);
    assert!(
        !tcp_exchange(&web, &db_ip, 6379).0,
        "crossed after policy rm"
    );
    assert!(resolves(&web, "10.240.1.1", &db).is_none());
}

#[test]
fn an_isolated_network_passes_only_the_allowed_pair() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network(
        "iso",
        &["--subnet", "10.240.3.0/24", "--opt", "isolate=true"],
    );
    let a = h.run("a", &net, &["--label", "role=client"]);
    let b = h.run("b", &net, &[]);
    let c = h.run("c", &net, &[]);
    let b_ip = h.ip_of(&b, &net);
    let c_ip = h.ip_of(&c, &net);
    let a_ip = h.ip_of(&a, &net);
    let _b = peer_echo_tcp(&b, 80);
    let _c = peer_echo_tcp(&c, 80);
    let _a = peer_echo_tcp(&a, 80);

    // ARP and the gateway still work: each pings its gateway.
    for n in [&a, &b, &c] {
        assert!(ping_until(n, "10.240.3.1", Duration::from_secs(5)).is_some());
    }
    assert!(!tcp_exchange(&a, &b_ip, 80).0, "isolated, yet a reached b");
    let o = ns_exec(&a, &["ping", "-c", "1", "-W", "1", &c_ip]);
    assert!(!o.status.success(), "isolated, yet a pinged c");

    h.vs_ok(&[
        "policy",
        "allow",
        "--from",
        &format!("{net}/label=role=client"),
        "--to",
        &format!("{net}/{b}"),
        "--port",
        "80",
    ]);
    let (ok, out) = tcp_exchange_within(&a, &b_ip, 80);
    assert!(ok, "the allowed pair: {out}");
    assert!(out.contains(&format!("peer={a_ip}")), "{out}");
    assert!(!tcp_exchange(&a, &c_ip, 80).0, "a reached c");
    assert!(!tcp_exchange(&c, &b_ip, 80).0, "c reached b");
    assert!(!tcp_exchange(&b, &a_ip, 80).0, "b opened a connection to a");
    assert!(denied(&h, "isolate") > 0);
}

#[test]
fn egress_deny_blocks_one_world_address_and_not_another() {
    require_root!();
    let mut h = Host::start(&[]);
    let world = Netns::new("vsw");
    veth(&h.ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    // Two more world addresses, on its loopback (routed there by the veth).
    for a in ["198.51.100.3/32", "198.51.100.4/32"] {
        ok(&["ip", "-n", &world.name, "addr", "add", a, "dev", "lo"]);
    }
    ok(&["ip", "-n", &world.name, "link", "set", "lo", "up"]);
    let _srv = peer_echo_tcp(&world.name, 8080);
    let net = h.network("n", &["--subnet", "10.240.4.0/24"]);
    let c = h.run("c", &net, &[]);
    let (ok, out) = tcp_exchange_within(&c, "198.51.100.3", 8080);
    assert!(ok, "egress before any rule: {out}\n{}", tail(&h.log(), 20));

    let name = h.vs_ok(&["policy", "egress", &net, "deny", "198.51.100.3/32"]);
    let name = name.trim().to_string();
    assert!(
        !tcp_exchange(&c, "198.51.100.3", 8080).0,
        "the denied address"
    );
    assert!(
        tcp_exchange_within(&c, "198.51.100.4", 8080).0,
        "another address"
    );
    // A longer prefix allows one port back inside a denied block.
    h.vs_ok(&["policy", "egress", &net, "deny", "198.51.100.0/24"]);
    h.vs_ok(&[
        "policy",
        "egress",
        &net,
        "allow",
        "198.51.100.4/32",
        "--port",
        "8080",
    ]);
    assert!(tcp_exchange_within(&c, "198.51.100.4", 8080).0);
    assert!(!tcp_exchange(&c, "198.51.100.2", 8080).0);
    assert!(denied(&h, &name) > 0, "{}", h.vs_ok(&["stats", "--json"]));
    let t = trace(
        &h,
        &[
            "--from",
            &c,
            "--to",
            "198.51.100.3",
            "--proto",
            "tcp",
            "--port",
            "8080",
        ],
    );
    assert_eq!(t["Verdict"]["Policy"], name.as_str(), "{t}");
}

#[test]
fn malformed_policies_are_refused_whole() {
    require_root!();
    let h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.240.5.0/24"]);
    for (args, says) in [
        (
            vec!["policy", "allow", "--from", "nosuch", "--to", &net],
            "not found",
        ),
        (
            vec![
                "policy", "allow", "--from", &net, "--to", &net, "--port", "0",
            ],
            "not a port",
        ),
        (
            vec!["policy", "egress", &net, "deny", "10.0.0.1/8"],
            "host bits",
        ),
        (
            vec!["policy", "allow", "--from", "a/", "--to", &net],
            "NET/CONTAINER",
        ),
        (vec!["policy", "rm", "nosuch"], "not found"),
        (
            vec!["policy", "allow", "--from", "host", "--to", &net],
            "does not switch",
        ),
    ] {
        let o = h.vs(&args);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // A request of two policies, one bad, keeps neither.
    let body = format!(
        r#"{{"Policies":[{{"Name":"good","Rule":{{"Egress":{{"Network":"{net}","Action":"deny","Cidr":"192.0.2.0/24","Ports":[]}}}}}},{{"Name":"bad","Rule":{{"Egress":{{"Network":"nosuch","Action":"deny","Cidr":"192.0.2.0/24","Ports":[]}}}}}}]}}"#
    );
    let o = cmd(&[
        "curl",
        "-s",
        "--unix-socket",
        &h.socket.display().to_string(),
        "-X",
        "POST",
        "-d",
        &body,
        "http://v/v1/policies",
    ]);
    assert!(stdout(&o).contains("nosuch"), "{}", stdout(&o));
    let ls = h.vs_json(&["policy", "ls", "--format", "json"]);
    assert_eq!(ls, serde_json::json!([]), "a half-applied request");
}

#[test]
fn a_networkpolicy_file_is_applied_whole_with_kubernetes_semantics() {
    require_root!();
    let mut h = Host::start(&[]);
    let front = h.network("front", &["--subnet", "10.240.6.0/24"]);
    let back = h.network("back", &["--subnet", "10.240.7.0/24"]);
    let web = h.run("web", &front, &["--label", "app=web"]);
    let admin = h.run("admin", &front, &["--label", "app=admin"]);
    let db = h.run("db", &back, &["--label", "app=db"]);
    let cache = h.run("cache", &back, &["--label", "app=cache"]);
    let db_ip = h.ip_of(&db, &back);
    let cache_ip = h.ip_of(&cache, &back);
    let _redis = peer_echo_tcp(&db, 6379);
    let _ssh = peer_echo_tcp(&db, 2222);
    let _cache = peer_echo_tcp(&cache, 80);
    // Inside back, before any policy, cache reaches every port of db.
    assert!(tcp_exchange_within(&cache, &db_ip, 2222).0);

    let yaml = format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-ingress
  namespace: {back}
spec:
  podSelector:
    matchLabels:
      app: db
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: cache
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {front}
      podSelector:
        matchLabels:
          app: web
    ports:
    - protocol: TCP
      port: 6379
"
    );
    let file = TempFile(h.dir.join("db.yaml"));
    std::fs::write(&file.0, &yaml).unwrap();
    let out = h.vs_ok(&["policy", "apply", "-f", &file.0.display().to_string()]);
    assert_eq!(out.trim(), format!("{back}.db-ingress"));

    // db takes 6379 from cache and from web across networks; nothing else.
    assert!(
        tcp_exchange_within(&cache, &db_ip, 6379).0,
        "cache -> db:6379"
    );
    assert!(
        !tcp_exchange(&cache, &db_ip, 2222).0,
        "cache -> db:2222, not in the policy"
    );
    assert!(
        tcp_exchange_within(&web, &db_ip, 6379).0,
        "web -> db:6379 by namespace selector"
    );
    assert!(
        !tcp_exchange(&admin, &db_ip, 6379).0,
        "admin is not selected by the rule"
    );
    // cache is not selected: db still reaches it.
    assert!(
        tcp_exchange_within(&db, &cache_ip, 80).0,
        "db -> cache, not isolated"
    );
    assert!(denied(&h, &format!("{back}.db-ingress")) > 0);

    // A file with one bad document changes nothing.
    let bad = format!("{yaml}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: x\n  namespace: {back}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: http\n");
    std::fs::write(&file.0, &bad).unwrap();
    let o = h.vs(&["policy", "apply", "-f", &file.0.display().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("named port"), "{}", stderr(&o));
    let ls = h.vs_json(&["policy", "ls", "--format", "json"]);
    assert_eq!(ls.as_array().map(Vec::len), Some(1), "{ls}");
    assert_eq!(ls[0]["Kind"], "NetworkPolicy");

    // Applied again unchanged: the same, no error. Removed: open again.
    std::fs::write(&file.0, &yaml).unwrap();
    h.vs_ok(&["policy", "apply", "-f", &file.0.display().to_string()]);
    h.vs_ok(&["policy", "rm", &format!("{back}.db-ingress")]);
    assert!(
        tcp_exchange_within(&cache, &db_ip, 2222).0,
        "after policy rm"
    );
}
