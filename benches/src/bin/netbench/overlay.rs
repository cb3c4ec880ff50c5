//! The `overlay` group: container A on host 1 sends to container B on host
//! 2 across an underlay, through a VXLAN overlay.
//!
//! Both scenarios build the same underlay: a namespace with a Linux bridge
//! (MTU 1500) and two "host" namespaces plugged into it with veths at
//! 192.0.2.11/24 and 192.0.2.12/24 (TEST-NET-1, only inside these
//! namespaces). Over it:
//!
//! - [`KernelVxlan`], the baseline, is what Docker's overlay driver does: in
//!   each host a Linux bridge with a kernel `vxlan` device (VNI
//!   [`VNI`], UDP 4789, `local` = the host's underlay address, a static
//!   all-zeros FDB entry toward the other host) and a veth to a container
//!   namespace; MTU 1450 (1500 minus 50 bytes of VXLAN over IPv4).
//! - [`VswitchOverlay`]: one vswitchd per host with a cluster key, joined by
//!   gossip; an overlay network made on host 1 with the same VNI, A made by
//!   `vswitch run` on host 1, B on host 2, B's address from `vswitch inspect`.
//!   With `encrypted`, the network is made with `--opt encrypted`; a vswitch
//!   that does not know the option yet skips the scenario with a note.
//!
//! Open vSwitch's userspace VXLAN over the same underlay is in `ovs.rs`.
//!
//! The overlay's addresses are 10.248.0.0/24, apart from the local group's.
//! Nothing is routed out of the namespaces.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::exec::Shell;
use crate::scenario::{
    add_bridge, add_veth, address_up, bridge_port, report_cleanup, wait_until, Deployment,
    Endpoints, Env, Netns, Scenario, VswitchHost, STEP,
};
use crate::Error;

/// The overlay network's VXLAN network identifier, the same in both.
pub const VNI: u32 = 4248;
/// The IANA VXLAN port, which vswitchd uses by default too.
pub const VXLAN_PORT: u16 = 4789;
const UNDERLAY_MTU: u32 = 1500;
/// Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
const VXLAN_OVERHEAD: u32 = 50;
/// What Docker gives an overlay's containers on a 1500-byte underlay.
pub const OVERLAY_MTU: u32 = UNDERLAY_MTU - VXLAN_OVERHEAD;
const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The hosts' underlay addresses, in order.
pub const HOST_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12)];
/// Gossip port on each host's underlay address.
const GOSSIP_PORT: u16 = 7946;
const OVERLAY_SUBNET: &str = "10.248.0.0/24";
const OVERLAY_PREFIX_LEN: u8 = 24;
/// The kernel baseline's containers (vswitch's get theirs from its IPAM).
const KERNEL_A_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 2);
const KERNEL_B_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 3);
/// Bound on each wait for the cluster to agree (members, network, endpoint).
const CONVERGE: Duration = Duration::from_secs(30);
/// Bound on retrying `network rm` while B's endpoint leaves host 1's view.
const NETWORK_RM_WITHIN: Duration = Duration::from_secs(20);

/// The underlay: a namespace holding bridge `br0`; hosts plug into it.
#[derive(Debug)]
pub struct Underlay {
    ns: Netns,
}

impl Underlay {
    pub fn create(sh: &Shell, name: String) -> Result<Underlay, Error> {
        let ns = Netns::create(sh, name)?;
        add_bridge(sh, ns.name(), UNDERLAY_MTU)?;
        Ok(Underlay { ns })
    }

    /// Gives `host` the interface `ul0` (up, with `addr`/24 if given), a
    /// veth whose peer `port` is a port of the underlay bridge.
    pub fn plug(
        &self,
        sh: &Shell,
        host: &Netns,
        port: &str,
        addr: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let (ul, h) = (self.ns.name(), host.name());
        add_veth(sh, (h, "ul0"), (ul, port), UNDERLAY_MTU)?;
        bridge_port(sh, ul, port)?;
        match addr {
            Some(addr) => address_up(sh, h, "ul0", &format!("{addr}/{UNDERLAY_PREFIX_LEN}")),
            None => sh
                .ok(&["ip", "-n", h, "link", "set", "ul0", "up"], STEP)
                .map(|_| ()),
        }
    }

    /// Deletes the underlay's namespace (and so its bridge).
    pub fn delete(&mut self) -> Result<(), Error> {
        self.ns.delete()
    }
}

/// Docker's overlay done by the kernel: per host a Linux bridge with a
/// `vxlan` device and a veth to the container.
#[derive(Debug)]
pub struct KernelVxlan;

#[derive(Debug)]
struct KernelVxlanDeployment {
    ep: Endpoints,
    // Deleted in this order: containers, hosts, underlay.
    a: Netns,
    b: Netns,
    h1: Netns,
    h2: Netns,
    underlay: Underlay,
}

impl Scenario for KernelVxlan {
    fn key(&self) -> &'static str {
        "kernel-vxlan"
    }
    fn title(&self) -> &'static str {
        "kernel vxlan"
    }
    fn group(&self) -> &'static str {
        "overlay"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "two host namespaces on a veth+bridge underlay (MTU 1500); in each a Linux bridge with a kernel vxlan device (VNI 4248, UDP 4789, static FDB to the other host) and a veth to a container namespace (MTU 1450), as Docker's overlay driver does"
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        let sh = &env.sh;
        // On failure the `?`s drop these in reverse: containers first.
        let underlay = Underlay::create(sh, format!("nb{}xu", env.tag))?;
        let h1 = Netns::create(sh, format!("nb{}xh1", env.tag))?;
        let h2 = Netns::create(sh, format!("nb{}xh2", env.tag))?;
        let a = Netns::create(sh, format!("nb{}xa", env.tag))?;
        let b = Netns::create(sh, format!("nb{}xb", env.tag))?;
        underlay.plug(sh, &h1, "p1", Some(HOST_IPS[0]))?;
        underlay.plug(sh, &h2, "p2", Some(HOST_IPS[1]))?;
        vxlan_host(sh, &h1, HOST_IPS[0], HOST_IPS[1], &a, KERNEL_A_IP)?;
        vxlan_host(sh, &h2, HOST_IPS[1], HOST_IPS[0], &b, KERNEL_B_IP)?;
        let ep = Endpoints::direct(
            a.name().to_string(),
            b.name().to_string(),
            KERNEL_B_IP,
            OVERLAY_MTU,
        );
        Ok(Box::new(KernelVxlanDeployment {
            ep,
            a,
            b,
            h1,
            h2,
            underlay,
        }))
    }
}

/// In `host`: bridge `br0`, `vx0` (VXLAN from `local` toward `remote`) and
/// `veth0` as its ports; `veth0`'s peer is `eth0` in `container` at `ip`.
fn vxlan_host(
    sh: &Shell,
    host: &Netns,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    container: &Netns,
    ip: Ipv4Addr,
) -> Result<(), Error> {
    let (h, c) = (host.name(), container.name());
    let mtu = OVERLAY_MTU.to_string();
    let (vni, port, local) = (VNI.to_string(), VXLAN_PORT.to_string(), local.to_string());
    add_bridge(sh, h, OVERLAY_MTU)?;
    // Learning stays on (as Docker's driver leaves it): B's MAC is learnt
    // from its first frame; the all-zeros entry carries the broadcasts.
    sh.ok(
        &[
            "ip", "-n", h, "link", "add", "vx0", "mtu", &mtu, "type", "vxlan", "id", &vni, "local",
            &local, "dev", "ul0", "dstport", &port,
        ],
        STEP,
    )?;
    sh.ok(
        &[
            "bridge",
            "-n",
            h,
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            &remote.to_string(),
        ],
        STEP,
    )?;
    bridge_port(sh, h, "vx0")?;
    add_veth(sh, (c, "eth0"), (h, "veth0"), OVERLAY_MTU)?;
    bridge_port(sh, h, "veth0")?;
    address_up(sh, c, "eth0", &format!("{ip}/{OVERLAY_PREFIX_LEN}"))
}

impl Deployment for KernelVxlanDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        [
            self.a.delete(),
            self.b.delete(),
            self.h1.delete(),
            self.h2.delete(),
            self.underlay.ns.delete(),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect()
    }
}

/// Two vswitchd hosts joined by gossip, one overlay network, A on host 1
/// and B on host 2; with `encrypted`, the network is made with `--opt
/// encrypted` (its tunnel traffic encrypted between the hosts).
#[derive(Debug)]
pub struct VswitchOverlay {
    pub encrypted: bool,
}

#[derive(Debug)]
struct VswitchOverlayDeployment {
    ep: Endpoints,
    /// Host 1 (where the network was created) first.
    hosts: Vec<VswitchHost>,
    underlay: Option<Underlay>,
    key_file: Option<PathBuf>,
    torn_down: bool,
}

impl Scenario for VswitchOverlay {
    fn key(&self) -> &'static str {
        if self.encrypted {
            "vswitch-overlay-encrypted"
        } else {
            "vswitch-overlay"
        }
    }
    fn title(&self) -> &'static str {
        if self.encrypted {
            "vswitch encrypted overlay"
        } else {
            "vswitch overlay"
        }
    }
    fn group(&self) -> &'static str {
        "overlay"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn also_compared_to(&self) -> &'static [&'static str] {
        // What encryption costs: against the plain overlay too.
        if self.encrypted {
            &["vswitch-overlay"]
        } else {
            &[]
        }
    }
    fn description(&self) -> &'static str {
        if self.encrypted {
            "as the vswitch overlay, the network made with `--opt encrypted` (tunnel traffic encrypted between the hosts)"
        } else {
            "the same underlay; one vswitchd per host (cluster key, gossip on the underlay), an overlay network (VNI 4248, VXLAN over UDP 4789, MTU from the underlay: 1450) made on host 1, container A (`vswitch run`) on host 1, B on host 2"
        }
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        let sh = &env.sh;
        // Names: `nb<tag>o…` for the plain overlay, `nb<tag>q…` encrypted.
        let p = if self.encrypted { "q" } else { "o" };
        let mut d = VswitchOverlayDeployment {
            // B's address (and the MTU) once the network is made.
            ep: Endpoints::direct(
                format!("nb{}{p}a", env.tag),
                format!("nb{}{p}b", env.tag),
                Ipv4Addr::UNSPECIFIED,
                OVERLAY_MTU,
            ),
            hosts: Vec::new(),
            underlay: None,
            key_file: None,
            torn_down: false,
        };
        // From here on, dropping `d` undoes whatever was done.
        let underlay = d
            .underlay
            .insert(Underlay::create(sh, format!("nb{}{p}u", env.tag))?);
        let key_file = d.key_file.insert(sh.dir().join(format!("cluster-{p}.key")));
        write_cluster_key(key_file)?;
        let key_arg = key_file.display().to_string();
        for (i, ip) in HOST_IPS.iter().enumerate() {
            let ns = Netns::create(sh, format!("nb{}{p}h{}", env.tag, i + 1))?;
            underlay.plug(sh, &ns, &format!("p{}", i + 1), Some(*ip))?;
            let (ip, bind) = (ip.to_string(), format!("{ip}:{GOSSIP_PORT}"));
            let host = VswitchHost::start(
                env,
                ns,
                &format!("vswitchd-h{}", i + 1),
                &[
                    "--cluster-key-file",
                    &key_arg,
                    "--advertise-addr",
                    &ip,
                    "--bind",
                    &bind,
                ],
            )?;
            d.hosts.push(host);
        }
        let (h1, h2) = (&d.hosts[0], &d.hosts[1]);
        h2.vs(&["join-cluster", &HOST_IPS[0].to_string()])?;
        for h in [h1, h2] {
            wait_until(
                &format!("both hosts alive in {}'s `vswitch members`", h.ns_name()),
                CONVERGE,
                || {
                    Ok(h.try_vs(&["members", "--format", "json"])?
                        .is_some_and(|out| alive_members(&out) == 2))
                },
            )?;
        }

        let net = format!("nb{}{p}v", env.tag);
        let vni = format!("vni={VNI}");
        let mut flags = vec![
            "--driver",
            "overlay",
            "--subnet",
            OVERLAY_SUBNET,
            "--opt",
            &vni,
        ];
        if self.encrypted {
            flags.extend(["--opt", "encrypted"]);
        }
        d.hosts[0]
            .create_network(&net, &flags)
            .map_err(|e| missing_option(e, "encrypted"))?;
        let (h1, h2) = (&d.hosts[0], &d.hosts[1]);
        wait_until(
            &format!("overlay network {net} on {}", h2.ns_name()),
            CONVERGE,
            || Ok(h2.try_vs(&["network", "inspect", &net])?.is_some()),
        )?;
        let inspect = h1.vs_json(&["network", "inspect", &net])?;
        d.ep.mtu = inspect[0]["MTU"]
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| Error::Parse {
                tool: "vswitch",
                what: format!("`network inspect {net}` shows no MTU: {inspect}"),
            })?;

        let (a, b) = (d.ep.a_ns.clone(), d.ep.b_ns.clone());
        d.hosts[0].run_container(&a, &net, &[], env.duration)?;
        d.hosts[1].run_container(&b, &net, &[], env.duration)?;
        let (h1, h2) = (&d.hosts[0], &d.hosts[1]);
        d.ep.b_ip = IpAddr::V4(h2.ipv4_of(&b, &net)?);
        d.ep.server_ip = d.ep.b_ip;
        // B's endpoint must have reached host 1's directory (MAC installed,
        // ARP answered locally) before the workloads start.
        wait_until(
            &format!("{b} in {}'s view of {net}", h1.ns_name()),
            CONVERGE,
            || {
                Ok(h1
                    .try_vs(&["network", "inspect", &net])?
                    .is_some_and(|out| network_has_container(&out, &b)))
            },
        )?;
        d.ep.watched = d.hosts.iter().filter_map(VswitchHost::watched).collect();
        Ok(Box::new(d))
    }
}

impl VswitchOverlayDeployment {
    fn teardown_all(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        // Containers everywhere first, so the network has no endpoint left
        // when host 1 removes it; then the daemons, namespaces, underlay.
        let mut errors: Vec<Error> = self
            .hosts
            .iter_mut()
            .flat_map(VswitchHost::remove_containers)
            .collect();
        if let Some(h1) = self.hosts.first_mut() {
            errors.extend(h1.remove_networks(NETWORK_RM_WITHIN));
        }
        while let Some(mut h) = self.hosts.pop() {
            errors.extend(h.teardown());
        }
        if let Some(mut u) = self.underlay.take() {
            if let Err(e) = u.delete() {
                errors.push(e);
            }
        }
        if let Some(k) = self.key_file.take() {
            if let Err(e) = std::fs::remove_file(&k) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(Error::Io {
                        context: format!("removing {}", k.display()),
                        source: e,
                    });
                }
            }
        }
        errors
    }
}

impl Deployment for VswitchOverlayDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        self.teardown_all()
    }
}

impl Drop for VswitchOverlayDeployment {
    fn drop(&mut self) {
        report_cleanup(self.teardown_all());
    }
}

/// A `network create` refused for an option this vswitch does not know
/// yet is a skip (the build under test predates it), not a failure.
fn missing_option(e: Error, option: &str) -> Error {
    let text = e.to_string();
    if text.contains(&format!("unknown network option `{option}`")) {
        Error::Unavailable(format!(
            "this vswitch does not know `--opt {option}` yet (`network create` refused it)"
        ))
    } else {
        e
    }
}

/// A fresh random cluster key, as 64 hex digits, in a file only root reads.
fn write_cluster_key(path: &std::path::Path) -> Result<(), Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io("reading /dev/urandom".into()))?;
    let mut opts = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex(&key)).as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many members `vswitch members --format json` shows alive.
fn alive_members(json: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v.as_array()
                .map(|a| a.iter().filter(|m| m["State"] == "alive").count())
        })
        .unwrap_or(0)
}

/// Whether `vswitch network inspect NET` lists a container named `name`
/// (local or on another host).
fn network_has_container(json: &str, name: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v[0]["Containers"]
                .as_object()
                .map(|c| c.values().any(|e| e["Name"] == name))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn an_unknown_option_is_a_skip_and_other_failures_stay_failures() {
        let refused = Error::Setup(
            "`vswitch network create ... --opt encrypted n` failed (exit status: 1): Error: unknown network option `encrypted`; known options: vni=N".into(),
        );
        assert!(matches!(
            missing_option(refused, "encrypted"),
            Error::Unavailable(_)
        ));
        let other = Error::Setup("network `n` already exists".into());
        assert!(matches!(
            missing_option(other, "encrypted"),
            Error::Setup(_)
        ));
    }

    #[test]
    fn overlay_mtu_is_what_docker_uses() {
        assert_eq!(OVERLAY_MTU, 1450);
    }

    #[rstest]
    #[case(r#"[{"Name":"a","State":"alive"},{"Name":"b","State":"alive"}]"#, 2)]
    #[case(r#"[{"Name":"a","State":"alive"},{"Name":"b","State":"suspect"}]"#, 1)]
    #[case(r#"[]"#, 0)]
    #[case("not json", 0)]
    fn counts_alive_members(#[case] json: &str, #[case] want: usize) {
        assert_eq!(alive_members(json), want);
    }

    #[rstest]
    #[case(
        r#"[{"Containers":{"e1":{"Name":"nb1ob","Host":"h2"}}}]"#,
        "nb1ob",
        true
    )]
    #[case(
        r#"[{"Containers":{"e1":{"Name":"nb1oa","Host":"h1"}}}]"#,
        "nb1ob",
        false
    )]
    #[case(r#"[{"Containers":{}}]"#, "nb1ob", false)]
    #[case(r#"[{"Name":"net"}]"#, "nb1ob", false)]
    fn finds_a_container_in_network_inspect(
        #[case] json: &str,
        #[case] name: &str,
        #[case] want: bool,
    ) {
        assert_eq!(network_has_container(json, name), want);
    }

    #[test]
    fn cluster_keys_are_fresh_hex_only_root_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("netbench-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p1, p2) = (dir.join("k1"), dir.join("k2"));
        write_cluster_key(&p1).unwrap();
        write_cluster_key(&p2).unwrap();
        let (k1, k2) = (
            std::fs::read_to_string(&p1).unwrap(),
            std::fs::read_to_string(&p2).unwrap(),
        );
        assert_eq!(k1.trim().len(), 64);
        assert!(k1.trim().chars().all(|c| c.is_ascii_hexdigit()), "{k1}");
        assert_ne!(k1, k2);
        let mode = std::fs::metadata(&p1).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwrites a file that is there.
        assert!(write_cluster_key(&p1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0, 9, 0xab, 0xff]), "0009abff");
    }
}
