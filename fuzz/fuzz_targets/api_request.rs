//! The control API's request decoding, fed arbitrary method, path and body.
//! Input layout: first byte selects the method, then the path up to a NUL,
//! then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_cli::api::Request;

const METHODS: [&str; 5] = ["GET", "POST", "DELETE", "PUT", "PATCH"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[m as usize % METHODS.len()];
    let (path, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    if let Ok(req) = Request::decode(method, &path, body) {
        // Whatever decodes names something valid.
        match &req {
            Request::NetworkCreate(c) => {
                assert!(vswitch_cli::api::validate_name("network", &c.name).is_ok())
            }
            Request::NetworkInspect(n) | Request::NetworkRemove(n) => {
                assert!(vswitch_cli::api::validate_name("network", n).is_ok())
            }
            Request::Capture(c) => {
                assert!(vswitch_cli::api::validate_name("container or network", &c.target).is_ok());
                assert!((1..=vswitch_cli::api::DEFAULT_SNAPLEN).contains(&c.snaplen));
                assert!(switch::capture::Filter::parse(&c.filter).is_ok());
                assert_ne!(c.count, Some(0));
            }
            Request::ContainerExited(n, e) => {
                assert!(vswitch_cli::api::validate_name("container", n).is_ok());
                assert!((0..=255).contains(&e.exit_code));
            }
            Request::ContainerLogs { name, .. } => {
                assert!(vswitch_cli::api::validate_name("container", name).is_ok())
            }
            Request::Trace(t) => {
                // A trace that decodes is one the daemon can run: a
                // container name, an IP or DNS name, a port exactly when
                // TCP or UDP asks for one.
                assert!(t.validate().is_ok());
                assert!(vswitch_cli::api::validate_name("container", &t.from).is_ok());
                assert!(
                    t.to.parse::<std::net::IpAddr>().is_ok()
                        || vswitch_cli::api::validate_dns_name(&t.to).is_ok()
                );
                let wants_port = t.proto != vswitch_cli::api::TraceProto::Icmp;
                assert_eq!(t.port.is_some_and(|p| p != 0), wants_port);
            }
            Request::Events(q) => {
                // A query that decodes is ordered, and reads back from
                // the path the client would send for it.
                if let (Some(s), Some(u)) = (q.since, q.until) {
                    assert!(s <= u);
                }
                assert_eq!(
                    Request::decode("GET", &q.path(), b"").ok(),
                    Some(Request::Events(*q))
                );
            }
            Request::PolicyCreate(c) => {
                // Every policy that decodes is whole and named once.
                assert!(!c.policies.is_empty());
                let mut names = std::collections::BTreeSet::new();
                for p in &c.policies {
                    assert!(p.check().is_ok());
                    assert!(names.insert(p.name.clone()));
                }
            }
            Request::PolicyInspect(n) | Request::PolicyRemove(n) => {
                assert!(switch::policy::spec::check_name(n).is_ok())
            }
            _ => {}
        }
    }
});
