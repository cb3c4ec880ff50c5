//! vswitch-cni's reading of an invocation: the environment and the
//! configuration a runtime (or anyone who can run the plugin) gives it.
//! Input layout: `CNI_COMMAND` selector byte, `CNI_ARGS` up to a NUL, then
//! the configuration on stdin. Results are built for every accepted ADD
//! and CHECK is compared against the configuration's own prevResult.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_cli::cni::spec::{self, Command, Invocation};

const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "BOGUS"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (args, stdin) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let args = String::from_utf8_lossy(args).into_owned();
    let command = COMMANDS[usize::from(sel) % COMMANDS.len()];
    let env = |k: &str| -> Option<String> {
        Some(match k {
            "CNI_COMMAND" => command.to_string(),
            "CNI_CONTAINERID" => "f00d".to_string(),
            "CNI_NETNS" => "/run/netns/fuzz".to_string(),
            "CNI_IFNAME" => "eth0".to_string(),
            "CNI_ARGS" => args.clone(),
            _ => return None,
        })
    };
    let Ok(inv) = Invocation::parse(&env, stdin) else {
        return;
    };
    assert!(spec::SUPPORTED_VERSIONS.contains(&inv.version.as_str()));
    if inv.command == Command::Version {
        return;
    }
    // The network name it would ask vswitchd for is a valid one.
    assert!(vswitch_cli::api::validate_name("network", inv.network()).is_ok());
    let conf = inv.conf.as_ref().expect("configuration");
    if let Some(prev) = &conf.prev_result {
        let check = vswitch_cli::api::CniCheck {
            attachment: vswitch_cli::api::CniAttachment::default(),
            live: vswitch_cli::api::LiveInterface::default(),
        };
        let _ = spec::check_differences(
            prev,
            "eth0",
            std::path::Path::new("/run/netns/fuzz"),
            &check,
        );
    }
    let result = spec::add_result(&inv.version, &vswitch_cli::api::CniAttachment::default());
    assert_eq!(result["cniVersion"], inv.version.as_str());
});
