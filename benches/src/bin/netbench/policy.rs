//! The `policy` group: two vswitch containers on one bridge network (the
//! baseline, as the local group's), against the same two containers on
//! two networks with `vswitch policy allow` between them, so every frame
//! is routed by the gateways and judged by the flow table (issue 16: under
//! 10 % of throughput).
//!
//! - `SameNetwork`: A and B on one network (A_IP, B_IP).
//! - `Routed`: A on one network, B on another (ROUTED_B_IP), and
//!   `vswitch policy allow --from NET_A --to NET_B` (every port, both
//!   protocols: the workloads use several).

use std::net::Ipv4Addr;

use crate::scenario::{
    Deployment, Endpoints, Env, Netns, Scenario, VswitchHost, A_IP, B_IP, MTU, SUBNET,
};
use crate::workload::Workload;
use crate::Error;

/// B's network in the routed scenario.
const ROUTED_SUBNET: &str = "10.248.0.0/24";
/// B's address there.
const ROUTED_B_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    SameNetwork,
    Routed,
}

#[derive(Debug)]
pub struct VswitchPolicy {
    pub mode: Mode,
}

#[derive(Debug)]
struct PolicyDeployment {
    ep: Endpoints,
    host: VswitchHost,
    routed: bool,
}

impl Scenario for VswitchPolicy {
    fn key(&self) -> &'static str {
        match self.mode {
            Mode::SameNetwork => "vswitch-samenet",
            Mode::Routed => "vswitch-routed",
        }
    }
    fn title(&self) -> &'static str {
        match self.mode {
            Mode::SameNetwork => "vswitch, one network",
            Mode::Routed => "vswitch, routed by a policy",
        }
    }
    fn group(&self) -> &'static str {
        "policy"
    }
    fn is_baseline(&self) -> bool {
        self.mode == Mode::SameNetwork
    }
    fn description(&self) -> &'static str {
        match self.mode {
            Mode::SameNetwork => "two `vswitch run` containers on one bridge network",
            Mode::Routed => "the same two on two bridge networks, with `vswitch policy allow --from A's --to B's` (routed by the gateways, judged per flow)",
        }
    }

    fn workloads(&self) -> Vec<Workload> {
        let mut w = Workload::all();
        w.push(Workload::Redis);
        w
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        let ns = Netns::create(&env.sh, format!("nb{}ph", env.tag))?;
        let mut host = VswitchHost::start(env, ns, "vswitchd-policy", &[])?;
        let (na, nb) = (format!("nb{}pa", env.tag), format!("nb{}pb", env.tag));
        let mtu = MTU.to_string();
        host.create_network(&na, &["--subnet", SUBNET, "--mtu", &mtu])?;
        let (b_net, b_ip) = match self.mode {
            Mode::SameNetwork => (na.clone(), B_IP),
            Mode::Routed => {
                host.create_network(&nb, &["--subnet", ROUTED_SUBNET, "--mtu", &mtu])?;
                host.vs(&[
                    "policy", "allow", "--from", &na, "--to", &nb, "--name", "nb",
                ])?;
                (nb.clone(), ROUTED_B_IP)
            }
        };
        let (a, b) = (format!("nb{}pca", env.tag), format!("nb{}pcb", env.tag));
        host.run_container(&a, &na, &["--ip", &A_IP.to_string()], env.duration)?;
        host.run_container(&b, &b_net, &["--ip", &b_ip.to_string()], env.duration)?;
        let mut ep = Endpoints::direct(a, b, b_ip, MTU);
        ep.watched.extend(host.watched());
        Ok(Box::new(PolicyDeployment {
            ep,
            host,
            routed: self.mode == Mode::Routed,
        }))
    }
}

impl Deployment for PolicyDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        if self.routed {
            if let Ok(s) = self.host.vs(&["stats", "--json"]) {
                let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
                eprintln!(
                    "netbench: policy: routed {} frames, denied {}",
                    v["Policy"]["Routed"], v["PolicyDenied"]
                );
            }
        }
        self.host.teardown()
    }
}
