//! Cluster-wide policies end to end: two vswitchd hosts on a veth
//! underlay, joined through gossip. A policy naming only overlays, made on
//! either host, is in force on both (the host that routes a connection
//! judges it, and the host that receives it from the tunnel judges it
//! again); removing it on either host removes it on both; labels of
//! containers on the other host come from the cluster directory; a host
//! that was down catches up on what changed meanwhile. Real clients and
//! servers (socat); traffic stays inside the namespaces the tests make.

mod common;

use std::time::Duration;

use common::*;

/// An overlay made on `h1` (`--driver overlay` and `flags`), once `h2`
/// has it too.
fn overlay(h1: &Host, h2: &Host, prefix: &str, flags: &[&str]) -> String {
    let mut args = vec!["--driver", "overlay"];
    args.extend_from_slice(flags);
    let net = h1.network(prefix, &args);
    wait_for(&format!("{net} on h2"), Duration::from_secs(10), || {
        h2.vs(&["network", "inspect", &net]).status.success()
    });
    net
}

/// `vswitch policy ls --format json` on `h`, by name.
fn policies(h: &Host) -> serde_json::Map<String, serde_json::Value> {
    h.vs_json(&["policy", "ls", "--format", "json"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["Name"].as_str()?.to_string(), p.clone())))
        .collect()
}

/// The hosts `h` has a tunnel port to on overlay `net`.
fn peers(h: &Host, net: &str) -> Vec<String> {
    h.vs_json(&["network", "inspect", net])[0]["Peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["Name"].as_str().map(str::to_string))
        .collect()
}

/// Frames this host's gateways routed from one network into another.
fn routed(h: &Host) -> u64 {
    h.vs_json(&["stats", "--json"])["Policy"]["Routed"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_policy_made_on_one_host_is_in_force_on_both_and_removed_from_the_other() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-policy-a", "policies across hosts");
    let (mut h1, mut h2) = cluster_pair(&ul, &key.0, "192.0.2.61", "192.0.2.62");
    let front = overlay(&h1, &h2, "front", &["--subnet", "10.237.1.0/24"]);
    let back = overlay(&h1, &h2, "back", &["--subnet", "10.237.2.0/24"]);
    let web = h2.run("web", &front, &[]);
    let db = h1.run("db", &back, &["--label", "app=db"]);
    let web_ip = h2.ip_of(&web, &front);
    let db_ip = h1.ip_of(&db, &back);
    let _redis = peer_echo_tcp(&db, 6379);
    let _ssh = peer_echo_tcp(&db, 2222);
    let _web = peer_echo_tcp(&web, 8080);
    wait_for(
        "each host sees the other's container",
        Duration::from_secs(10),
        || has_container(&h2, &back, &db) && has_container(&h1, &front, &web),
    );

    // Nothing crosses before a policy says so.
    let (ok, out) = tcp_exchange(&web, &db_ip, 6379);
    assert!(!ok, "crossed without a policy: {out}");

    h1.vs_ok(&[
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
    wait_for("the policy on h2", Duration::from_secs(5), || {
        policies(&h2).contains_key("web-db")
    });
    for h in [&h1, &h2] {
        let p = &policies(h)["web-db"];
        assert_eq!(p["Scope"], "global", "{p}");
        assert_eq!(p["Active"], true, "{p}");
        assert_eq!(p["Kind"], "allow", "{p}");
    }

    // web's host routes it from front into back (db's labels came with
    // its endpoint), db's host judges it again as it comes out of the
    // tunnel, and the server sees web's own address.
    let (ok, out) = tcp_exchange_within(&web, &db_ip, 6379);
    assert!(
        ok,
        "the allowed port: {out}\n{}\n{}",
        tail(&h2.log(), 30),
        tail(&h1.log(), 30)
    );
    assert!(out.contains(&format!("peer={web_ip}")), "{out}");
    assert!(routed(&h2) > 0, "{}", h2.vs_ok(&["stats", "--json"]));
    // Another port of db, and db opening a connection of its own to web.
    assert!(!tcp_exchange(&web, &db_ip, 2222).0, "db:2222 reached");
    assert!(
        !tcp_exchange(&db, &web_ip, 8080).0,
        "db opened a connection to web"
    );

    // web goes, and another container of front comes on h2 once the
    // policy is in force: db's host admits what h2 routes again.
    assert!(
        peers(&h1, &back).contains(&h2.ns.name),
        "h2 routes into back"
    );
    h2.vs_ok(&["rm", &web]);
    wait_for(
        "h1 drops its tunnel port to h2 on back",
        Duration::from_secs(5),
        || !peers(&h1, &back).contains(&h2.ns.name),
    );
    let web2 = h2.run("web2", &front, &[]);
    let web2_ip = h2.ip_of(&web2, &front);
    let (ok, out) = tcp_exchange_within(&web2, &db_ip, 6379);
    assert!(ok, "a client that came after the policy: {out}");
    assert!(out.contains(&format!("peer={web2_ip}")), "{out}");

    // Removed on the other host: gone on both, and nothing crosses.
    h2.vs_ok(&["policy", "rm", "web-db"]);
    wait_for("the removal on h1", Duration::from_secs(5), || {
        !policies(&h1).contains_key("web-db")
    });
    let (ok, out) = tcp_exchange(&web2, &db_ip, 6379);
    assert!(!ok, "crossed after policy rm: {out}");
    // Nothing refused: what both hosts send is well formed.
    for h in [&h1, &h2] {
        let gossip = &h.vs_json(&["stats", "--json"])["Gossip"];
        assert_eq!(gossip["PoliciesRefused"], 0, "{gossip}");
    }
}

#[test]
fn labels_of_containers_on_the_other_host_come_from_the_directory() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-policy-b", "labels across hosts");
    let (mut h1, mut h2) = cluster_pair(&ul, &key.0, "192.0.2.71", "192.0.2.72");
    let iso = overlay(
        &h1,
        &h2,
        "iso",
        &["--subnet", "10.237.3.0/24", "--opt", "isolate=true"],
    );
    let client = h2.run("cl", &iso, &["--label", "role=client"]);
    let other = h2.run("ot", &iso, &[]);
    let b = h1.run("b", &iso, &[]);
    let client_ip = h2.ip_of(&client, &iso);
    let b_ip = h1.ip_of(&b, &iso);
    let _b = peer_echo_tcp(&b, 80);
    wait_for(
        "h1 sees the containers of h2",
        Duration::from_secs(10),
        || has_container(&h1, &iso, &client) && has_container(&h1, &iso, &other),
    );
    assert!(
        ping_until(&client, "10.237.3.1", Duration::from_secs(5)).is_some(),
        "the gateway answers in an isolated network"
    );
    assert!(
        !tcp_exchange(&client, &b_ip, 80).0,
        "isolated, yet client reached b"
    );

    // Made on b's host, which knows client's label only from the
    // directory, since client lives on the other host.
    h1.vs_ok(&[
        "policy",
        "allow",
        "--from",
        &format!("{iso}/label=role=client"),
        "--to",
        &format!("{iso}/{b}"),
        "--port",
        "80",
        "--name",
        "client-b",
    ]);
    wait_for("the policy on h2", Duration::from_secs(5), || {
        policies(&h2).contains_key("client-b")
    });
    let (ok, out) = tcp_exchange_within(&client, &b_ip, 80);
    assert!(
        ok,
        "the labelled client: {out}\n{}\n{}",
        tail(&h1.log(), 30),
        tail(&h2.log(), 30)
    );
    assert!(out.contains(&format!("peer={client_ip}")), "{out}");
    assert!(
        !tcp_exchange(&other, &b_ip, 80).0,
        "a container without the label"
    );
    let denied = h1.vs_json(&["stats", "--json"])["PolicyDenied"]["isolate"]
        .as_u64()
        .unwrap_or(0)
        + h2.vs_json(&["stats", "--json"])["PolicyDenied"]["isolate"]
            .as_u64()
            .unwrap_or(0);
    assert!(denied > 0, "no isolation denial counted");
}

#[test]
fn a_host_that_was_down_catches_up_on_the_policies() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-policy-c", "policies while away");
    let (h1, mut h2) = cluster_pair(&ul, &key.0, "192.0.2.81", "192.0.2.82");
    let front = overlay(&h1, &h2, "front", &["--subnet", "10.237.4.0/24"]);
    let back = overlay(&h1, &h2, "back", &["--subnet", "10.237.5.0/24"]);
    let allow = |h: &Host, name: &str, port: &str| {
        h.vs_ok(&[
            "policy", "allow", "--from", &front, "--to", &back, "--port", port, "--name", name,
        ]);
    };
    allow(&h1, "old", "80");
    // One of h2's own, and one that is h2's alone (a bridge network).
    allow(&h2, "mine", "81");
    let local = h2.network("local", &["--subnet", "10.237.6.0/24"]);
    h2.vs_ok(&[
        "policy", "allow", "--from", &local, "--to", &back, "--name", "alone",
    ]);
    wait_for(
        "both policies on both hosts",
        Duration::from_secs(5),
        || {
            let (p1, p2) = (policies(&h1), policies(&h2));
            ["old", "mine"]
                .iter()
                .all(|n| p1.contains_key(*n) && p2.contains_key(*n))
        },
    );
    assert_eq!(policies(&h2)["alone"]["Scope"], "local");
    assert!(
        !policies(&h1).contains_key("alone"),
        "a local policy spread"
    );

    // Too large for a gossip packet: refused with a sentence, kept nowhere.
    let ports: Vec<String> = (1000..1200).map(|p| p.to_string()).collect();
    let mut args = vec![
        "policy", "allow", "--from", &front, "--to", &back, "--name", "huge",
    ];
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let o = h1.vs(&args);
    assert!(!o.status.success(), "a policy too large to replicate");
    assert!(
        stderr(&o).contains("fit in a gossip packet"),
        "{}",
        stderr(&o)
    );
    assert!(!policies(&h1).contains_key("huge"));

    // h2 crashes; meanwhile h1 removes one of the policies h2 keeps in its
    // store, replaces h2's own, and makes a new one.
    h2.kill9();
    h1.vs_ok(&["policy", "rm", "old"]);
    h1.vs_ok(&["policy", "rm", "mine"]);
    allow(&h1, "mine", "8081");
    allow(&h1, "new", "443");
    h2.restart();
    // h2 offers what it kept at the versions it had; the newer changes
    // win on both hosts.
    wait_for("h2 catches up", Duration::from_secs(30), || {
        let p = policies(&h2);
        !p.contains_key("old")
            && p.contains_key("new")
            && p.get("mine")
                .is_some_and(|m| m["Summary"].as_str().unwrap_or("").contains("8081"))
    });
    let p1 = policies(&h1);
    assert!(!p1.contains_key("old"), "h2 brought back a removed policy");
    assert!(
        p1["mine"]["Summary"].as_str().unwrap().contains("8081"),
        "{}",
        p1["mine"]
    );
    assert!(policies(&h2).contains_key("alone"));
}
