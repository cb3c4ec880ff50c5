//! `vswitch policy apply -f`: any text (a NetworkPolicy file anyone may
//! hand the CLI) is read or refused, never panics, and its refusal prints;
//! what is read stays within the bounds, passes the policy checks and names
//! each policy once per network.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use switch::policy::Rule;
use vswitch_cli::k8s_policy::{parse, MAX_DOCUMENTS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policies = match parse(text) {
        Ok(policies) => policies,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(policies.len() <= MAX_DOCUMENTS);
    let mut seen = HashSet::new();
    for p in &policies {
        assert_eq!(p.check(), Ok(()));
        let Rule::Kubernetes(np) = &p.rule else {
            panic!("{} is not a NetworkPolicy", p.name);
        };
        assert!(np.ingress.is_some() || np.egress.is_some());
        assert!(seen.insert((np.network.as_str(), p.name.as_str())));
    }
});
