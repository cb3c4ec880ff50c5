//! The `publish` and `egress` groups: traffic between a container and
//! something outside its "host", through a userspace forwarder in the host.
//!
//! `publish`: a "client" namespace (192.0.2.2/24) reaches the "host"
//! namespace's address 192.0.2.1 on ports [`IPERF_PORT`] and [`ECHO_PORT`],
//! which something in the host forwards to the same ports in a container
//! namespace, where the servers listen. Baselines: a `socat` relay per port
//! (the container on a veth to the host) and pasta's port forwarding (`-t`);
//! the candidate: vswitchd with `vswitch run -d -p 5201:5201 -p 5202:5202`.
//!
//! The publish group's rows: TCP from the client to the host's address,
//! TCP from a client in the host namespace itself to `127.0.0.1` (the
//! published port on the host's loopback, where pasta splices), the UDP
//! 64-byte packet rate to port [`PPS_PORT`], and the connection rate.
//!
//! `egress`: the container downloads from and uploads to an iperf3 server in a "world"
//! namespace (198.51.100.2/24) on a veth to the host (198.51.100.1/24);
//! the container has no route to it but through the forwarder, whose host
//! sockets reach the world. Baselines: pasta and slirp4netns attached to
//! the container's namespace; the candidate: vswitchd's egress NAT.
//!
//! Everything is inside namespaces made here: the client, the world and
//! the containers have no other interfaces, and the only default route
//! (pasta needs one to pick its template interface) points at an unused
//! address on a veth whose other end is the client's or the world's
//! namespace, so nothing can leave them. pasta runs with `--runas 0`: as
//! `nobody` it could not enter the container's namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::exec::{
    in_ns, listening_ports, on_path, wait_bound, wait_listening, Background, Proto, Shell,
};
use crate::rootless::{child_in_other_netns, tun_usable_by_everyone, User};
use crate::scenario::{
    add_veth, address_up, wait_until, Deployment, Endpoints, Env, Netns, Scenario, VswitchHost,
    STEP,
};
use crate::workload::{Workload, ECHO_PORT, IPERF_PORT, PPS_PORT};
use crate::Error;

/// The client link: the client's and the host's address (publish group).
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// An address on the client link nothing answers: pasta's default route.
const CLIENT_LINK_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The world link: the world's and the host's address (egress group).
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const HOST_WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// An address on the world link nothing answers: pasta's default route
/// (not the world's own, or pasta would map the world to its loopback).
const WORLD_LINK_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const LINK_PREFIX_LEN: u8 = 24;
/// The publish group's container network (vswitch's, and the socat relay's
/// veth between host and container).
const PUBLISH_SUBNET: &str = "10.249.0.0/24";
const RELAY_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 1);
const PUBLISH_CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 2);
/// The egress group's vswitch network.
const EGRESS_SUBNET: &str = "10.250.0.0/24";
const EGRESS_CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const VETH_MTU: u32 = 1500;
/// The MTU pasta and slirp4netns give their tap (both programs' default).
const USERMODE_MTU: u32 = 65520;
/// Bound on a forwarder configuring its namespace or opening its ports.
const READY: Duration = Duration::from_secs(15);

fn publish_workloads() -> Vec<Workload> {
    vec![
        Workload::TcpStream { streams: 1 },
        Workload::TcpStreamLoopback,
        Workload::PacketRate,
        Workload::ConnectRate,
    ]
}

fn egress_workloads() -> Vec<Workload> {
    vec![Workload::TcpDownload, Workload::TcpUpload]
}

/// Fails with [`Error::Unavailable`] (a skip, not a failure) when `prog`
/// is not installed.
fn require(prog: &str, package: &str) -> Result<(), Error> {
    if on_path(prog) {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "`{prog}` is not installed (Debian: apt install {package})"
        )))
    }
}

/// A veth between `a` (interface `a_if` at `a_ip`/24) and `b` (`b_if` at
/// `b_ip`/24), made directly inside the two namespaces, both up.
fn veth(
    sh: &Shell,
    (a, a_if, a_ip): (&Netns, &str, Ipv4Addr),
    (b, b_if, b_ip): (&Netns, &str, Ipv4Addr),
) -> Result<(), Error> {
    add_veth(sh, (a.name(), a_if), (b.name(), b_if), VETH_MTU)?;
    for (ns, ifname, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        address_up(sh, ns.name(), ifname, &format!("{ip}/{LINK_PREFIX_LEN}"))?;
    }
    Ok(())
}

/// Sets per-namespace sysctls in `ns` (these never touch the machine's).
fn sysctl(sh: &Shell, ns: &Netns, settings: &[&str]) -> Result<(), Error> {
    let mut argv = vec!["sysctl", "-qw"];
    argv.extend_from_slice(settings);
    sh.ok(&in_ns(ns.name(), &argv), STEP).map(|_| ())
}

/// Room for many short connections: every ephemeral port, and reuse of
/// ports in TIME-WAIT for new outgoing connections.
fn many_connections(sh: &Shell, ns: &Netns) -> Result<(), Error> {
    sysctl(
        sh,
        ns,
        &[
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
}

/// Lets every group open ICMP ping sockets in `ns`: each forwarder carries
/// the container's echo requests (netbench's reachability check) that way.
fn allow_ping_sockets(sh: &Shell, ns: &Netns) -> Result<(), Error> {
    sysctl(sh, ns, &["net.ipv4.ping_group_range=0 2147483647"])
}

/// A default route in `ns` toward an address nothing answers on a veth to
/// a namespace made here (pasta picks its template interface by it).
fn unanswered_default_route(sh: &Shell, ns: &Netns, via: Ipv4Addr, dev: &str) -> Result<(), Error> {
    sh.ok(
        &[
            "ip",
            "-n",
            ns.name(),
            "route",
            "add",
            "default",
            "via",
            &via.to_string(),
            "dev",
            dev,
        ],
        STEP,
    )
    .map(|_| ())
}

/// Fails with the end of its log when the forwarder `proc_` has exited.
fn still_running(proc_: &mut Background) -> Result<(), Error> {
    match proc_.exited() {
        Some(status) => Err(Error::Setup(format!(
            "`{}` exited ({status}): {}",
            proc_.argv(),
            proc_.log_tail(10)
        ))),
        None => Ok(()),
    }
}

/// Waits until `ns` has an IPv4 address `addr` (a forwarder configured it).
fn wait_address(sh: &Shell, ns: &str, addr: Ipv4Addr, proc_: &mut Background) -> Result<(), Error> {
    let want = format!("inet {addr}/");
    wait_until(
        &format!("{} to configure {ns}", proc_.argv()),
        READY,
        || {
            still_running(proc_)?;
            let out = sh.ok(&["ip", "-n", ns, "-4", "-o", "addr", "show"], STEP)?;
            Ok(out.contains(&want))
        },
    )
}

/// Waits until `ns` has a default route (a forwarder configured it).
fn wait_default_route(sh: &Shell, ns: &str, proc_: &mut Background) -> Result<(), Error> {
    wait_until(&format!("{} to route {ns}", proc_.argv()), READY, || {
        still_running(proc_)?;
        let out = sh.ok(&["ip", "-n", ns, "-4", "route", "show", "default"], STEP)?;
        Ok(!out.trim().is_empty())
    })
}

/// Waits until the process `proc_` listens on every port of `ports` (in
/// the namespace it runs in).
fn wait_ports(proc_: &mut Background, ports: &[u16]) -> Result<(), Error> {
    let pid = proc_
        .pid()
        .ok_or_else(|| Error::Setup(format!("`{}` is not running", proc_.argv())))?;
    wait_until(
        &format!("{} to listen on {ports:?}", proc_.argv()),
        READY,
        || {
            still_running(proc_)?;
            let open = listening_ports(pid);
            Ok(ports.iter().all(|p| open.contains(p)))
        },
    )
}

/// What every scenario of both groups sets up; dropping it (or
/// [`Deployment::teardown`]) stops the forwarders, then the vswitchd host
/// (with its containers and namespace), then deletes the namespaces.
#[derive(Debug)]
struct Built {
    ep: Endpoints,
    /// Forwarders (socat, pasta, slirp4netns), stopped first.
    procs: Vec<Background>,
    host: Option<VswitchHost>,
    /// Namespaces made here, deleted after the host, latest first.
    nss: Vec<Netns>,
    /// The rootless scenarios' user, removed last (with whatever it still
    /// runs).
    user: Option<User>,
}

impl Built {
    fn new(ep: Endpoints) -> Built {
        Built {
            ep,
            procs: Vec::new(),
            host: None,
            nss: Vec::new(),
            user: None,
        }
    }

    /// Owns `ns` from now on; returns its name.
    fn keep(&mut self, ns: Netns) -> String {
        let name = ns.name().to_string();
        self.nss.push(ns);
        name
    }

    fn ns(&self, name: &str) -> &Netns {
        self.nss
            .iter()
            .find(|n| n.name() == name)
            .expect("a namespace this deployment made")
    }
}

impl Deployment for Built {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        let mut errors = Vec::new();
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut h) = self.host.take() {
            errors.extend(h.teardown());
        }
        while let Some(mut ns) = self.nss.pop() {
            if let Err(e) = ns.delete() {
                errors.push(e);
            }
        }
        if let Some(mut u) = self.user.take() {
            errors.extend(u.remove());
        }
        errors
    }
}

fn publish_endpoints(client: String, host: String, container: String) -> Endpoints {
    Endpoints {
        a_ns: client,
        b_ns: container,
        b_ip: IpAddr::V4(HOST_IP),
        server_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        mtu: VETH_MTU,
        loopback_ns: Some(host),
        watched: Vec::new(),
    }
}

fn egress_endpoints(container: String, world: String, mtu: u32) -> Endpoints {
    Endpoints::direct(container, world, WORLD_IP, mtu)
}

/// Makes the client namespace and the host namespace joined by the client
/// link, both tuned for many short connections. Returns what the publish
/// group's scenario `prefix` builds on, holding the client, with the client
/// as A and the container `nb<tag><prefix>b` (not made yet) as B; and the
/// host, for the caller to keep.
fn client_and_host(env: &Env, prefix: &str) -> Result<(Built, Netns), Error> {
    let sh = &env.sh;
    let client = Netns::create(sh, format!("nb{}{prefix}c", env.tag))?;
    let host = Netns::create(sh, format!("nb{}{prefix}h", env.tag))?;
    veth(sh, (&client, "eth0", CLIENT_IP), (&host, "cl0", HOST_IP))?;
    many_connections(sh, &client)?;
    many_connections(sh, &host)?;
    let container = format!("nb{}{prefix}b", env.tag);
    let mut d = Built::new(publish_endpoints(
        client.name().to_string(),
        host.name().to_string(),
        container,
    ));
    d.keep(client);
    Ok((d, host))
}

/// Makes the world namespace and the host namespace joined by the world
/// link; ping sockets allowed in the host. Returns what the egress group's
/// scenario `prefix` builds on, holding the world, with the container
/// `nb<tag><prefix>b` (not made yet, its link's MTU `mtu`) as A and the
/// world as B; and the host, for the caller to keep.
fn world_and_host(env: &Env, prefix: &str, mtu: u32) -> Result<(Built, Netns), Error> {
    let sh = &env.sh;
    let world = Netns::create(sh, format!("nb{}{prefix}w", env.tag))?;
    let host = Netns::create(sh, format!("nb{}{prefix}h", env.tag))?;
    veth(
        sh,
        (&world, "eth0", WORLD_IP),
        (&host, "wl0", HOST_WORLD_IP),
    )?;
    allow_ping_sockets(sh, &host)?;
    let container = format!("nb{}{prefix}b", env.tag);
    let mut d = Built::new(egress_endpoints(container, world.name().to_string(), mtu));
    d.keep(world);
    Ok((d, host))
}

/// pasta's spelling of a port list: `none`, or the ports comma-separated.
fn pasta_ports(ports: &[u16]) -> String {
    if ports.is_empty() {
        "none".to_string()
    } else {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// pasta's flags common to every scenario: in the foreground, IPv4, the
/// namespace configured by pasta, TCP `tcp` and UDP `udp` ports forwarded
/// into it and none out of it.
fn pasta_argv<'a>(tcp: &'a str, udp: &'a str) -> [&'a str; 13] {
    [
        "pasta",
        "--foreground",
        "--ipv4-only",
        "--config-net",
        "--no-map-gw",
        "--tcp-ports",
        tcp,
        "--udp-ports",
        udp,
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
    ]
}

/// Starts pasta in `host`, attached to `container`'s namespace, with TCP
/// `ports` and UDP `udp_ports` forwarded into it (none: egress only);
/// returns once it has configured the namespace (with `addr`) and listens
/// on the TCP ports.
fn start_pasta(
    env: &Env,
    host: &Netns,
    container: &Netns,
    (ports, udp_ports): (&[u16], &[u16]),
    addr: Ipv4Addr,
) -> Result<Background, Error> {
    let (tcp, udp) = (pasta_ports(ports), pasta_ports(udp_ports));
    let netns = format!("/run/netns/{}", container.name());
    let mut pasta = env.sh.spawn(
        &in_ns(
            host.name(),
            &[
                pasta_argv(&tcp, &udp).as_slice(),
                &["--runas", "0", "--netns", &netns],
            ]
            .concat(),
        ),
        &format!("pasta-{}", container.name()),
    )?;
    wait_address(&env.sh, container.name(), addr, &mut pasta)?;
    wait_ports(&mut pasta, ports)?;
    Ok(pasta)
}

/// Starts pasta as `user` (unprivileged, as rootless Podman runs it) in
/// `host`, spawning its own user and network namespace with a command that
/// only keeps it (`pasta ... -- sleep N`), TCP `ports` and UDP `udp_ports`
/// forwarded into it; names that namespace `container` under `/run/netns`
/// for the workloads; returns once pasta has configured it (with `addr`)
/// and listens on the TCP ports.
fn start_rootless_pasta(
    env: &Env,
    user: &User,
    host: &Netns,
    container: &str,
    (ports, udp_ports): (&[u16], &[u16]),
    addr: Ipv4Addr,
) -> Result<(Background, Netns), Error> {
    let (tcp, udp) = (pasta_ports(ports), pasta_ports(udp_ports));
    let sleep = (u64::from(env.duration) * 10 + 600).to_string();
    let mut pasta = env.sh.spawn(
        &user.run_as.argv(
            host.name(),
            &[pasta_argv(&tcp, &udp).as_slice(), &["--", "sleep", &sleep]].concat(),
        ),
        &format!("pasta-{container}"),
    )?;
    let pid = pasta
        .pid()
        .ok_or_else(|| Error::Setup(format!("`{}` is not running", pasta.argv())))?;
    let mut child = None;
    wait_until(
        &format!("{} to make its namespace", pasta.argv()),
        READY,
        || {
            still_running(&mut pasta)?;
            child = child_in_other_netns(pid);
            Ok(child.is_some())
        },
    )?;
    let ns = Netns::attach(&env.sh, container.to_string(), child.unwrap_or(pid))?;
    wait_address(&env.sh, container, addr, &mut pasta)?;
    wait_ports(&mut pasta, ports)?;
    Ok((pasta, ns))
}

fn watch(label: &str, p: &Background) -> Option<crate::cpu::Watched> {
    Some(crate::cpu::Watched {
        label: label.to_string(),
        pid: p.pid()?,
    })
}

/// vswitchd in `host_ns`: as root, or (`rootless_user`: the suffix of the
/// user netbench makes for it) `vswitchd --rootless` as that user.
fn start_vswitchd<'a>(
    env: &Env,
    d: &'a mut Built,
    host_ns: Netns,
    rootless_user: Option<&str>,
) -> Result<&'a mut VswitchHost, Error> {
    let host = match rootless_user {
        None => VswitchHost::start(env, host_ns, "vswitchd", &[])?,
        Some(suffix) => {
            let user = d
                .user
                .insert(User::create(&env.sh, format!("nb{}{suffix}", env.tag))?);
            VswitchHost::start_rootless(env, host_ns, "vswitchd-rootless", user)?
        }
    };
    d.ep.watched.extend(host.watched());
    Ok(d.host.insert(host))
}

/// The publish group's vswitch container: on network `net`, with the
/// workloads' ports published.
fn publish_on_vswitch(
    env: &Env,
    host: &mut VswitchHost,
    container: &str,
    net: &str,
) -> Result<(), Error> {
    host.create_network(
        net,
        &["--subnet", PUBLISH_SUBNET, "--mtu", &VETH_MTU.to_string()],
    )?;
    let (iperf, echo, pps) = (
        format!("{IPERF_PORT}:{IPERF_PORT}"),
        format!("{ECHO_PORT}:{ECHO_PORT}"),
        format!("{PPS_PORT}:{PPS_PORT}/udp"),
    );
    host.run_container(
        container,
        net,
        &[
            "--ip",
            &PUBLISH_CONTAINER_IP.to_string(),
            "-p",
            &iperf,
            "-p",
            &echo,
            "-p",
            &pps,
        ],
        env.duration,
    )
}

/// The egress group's vswitch container, on network `net`.
fn egress_on_vswitch(
    env: &Env,
    host: &mut VswitchHost,
    container: &str,
    net: &str,
) -> Result<(), Error> {
    host.create_network(
        net,
        &["--subnet", EGRESS_SUBNET, "--mtu", &VETH_MTU.to_string()],
    )?;
    host.run_container(
        container,
        net,
        &["--ip", &EGRESS_CONTAINER_IP.to_string()],
        env.duration,
    )
}

/// Baseline: a plain userspace TCP relay, one `socat` per port in the host,
/// to the container on a veth.
#[derive(Debug)]
pub struct SocatRelay;

impl Scenario for SocatRelay {
    fn key(&self) -> &'static str {
        "socat-relay"
    }
    fn title(&self) -> &'static str {
        "socat relay"
    }
    fn group(&self) -> &'static str {
        "publish"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "client namespace → host namespace 192.0.2.1:5201/5202, where `socat TCP-LISTEN:PORT,fork,reuseaddr TCP:10.249.0.2:PORT` relays to the container on a veth (10.249.0.0/24, MTU 1500), and `socat UDP4-LISTEN:5203,reuseaddr UDP4:10.249.0.2:5203` the UDP flow; a plain userspace relay, one forked socat per TCP connection; the loopback row's client is in the host namespace, to 127.0.0.1"
    }
    fn workloads(&self) -> Vec<Workload> {
        publish_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        require("socat", "socat")?;
        let sh = &env.sh;
        let (mut d, host) = client_and_host(env, "ps")?;
        let host = d.keep(host);
        let c = d.keep(Netns::create(sh, d.ep.b_ns.clone())?);
        veth(
            sh,
            (d.ns(&c), "eth0", PUBLISH_CONTAINER_IP),
            (d.ns(&host), "ct0", RELAY_HOST_IP),
        )?;
        for port in [IPERF_PORT, ECHO_PORT] {
            let mut relay = sh.spawn(
                &in_ns(
                    &host,
                    &[
                        "socat",
                        &format!("TCP-LISTEN:{port},fork,reuseaddr"),
                        &format!("TCP:{PUBLISH_CONTAINER_IP}:{port}"),
                    ],
                ),
                &format!("socat-{port}-{host}"),
            )?;
            wait_listening(&mut relay, "socat", port, READY)?;
            d.procs.push(relay);
        }
        // One UDP flow (the packet-rate workload's): without `fork` socat
        // takes the first sender as its peer and relays both ways.
        let mut relay = sh.spawn(
            &in_ns(
                &host,
                &[
                    "socat",
                    &format!("UDP4-LISTEN:{PPS_PORT},reuseaddr"),
                    &format!("UDP4:{PUBLISH_CONTAINER_IP}:{PPS_PORT}"),
                ],
            ),
            &format!("socat-udp-{PPS_PORT}-{host}"),
        )?;
        wait_bound(&mut relay, "socat", Proto::Udp, PPS_PORT, READY)?;
        d.procs.push(relay);
        // The relays fork per connection; the children's CPU is not
        // sampled (the machine's totals still show it).
        Ok(Box::new(d))
    }
}

/// Baseline: pasta's port forwarding into the container's namespace.
#[derive(Debug)]
pub struct PastaPublish;

impl Scenario for PastaPublish {
    fn key(&self) -> &'static str {
        "pasta-publish"
    }
    fn title(&self) -> &'static str {
        "pasta"
    }
    fn group(&self) -> &'static str {
        "publish"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "client namespace → host namespace 192.0.2.1:5201/5202, where `pasta --config-net -t 5201,5202 -u 5203 --netns CONTAINER` (as root, --runas 0, IPv4, tap MTU 65520) forwards into the container's namespace; the loopback row's client is in the host namespace, to 127.0.0.1 (pasta splices loopback connections)"
    }
    fn workloads(&self) -> Vec<Workload> {
        publish_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        require("pasta", "passt")?;
        let sh = &env.sh;
        let (mut d, host) = client_and_host(env, "pp")?;
        let host = d.keep(host);
        unanswered_default_route(sh, d.ns(&host), CLIENT_LINK_GW, "cl0")?;
        let c = d.keep(Netns::create(sh, d.ep.b_ns.clone())?);
        // pasta gives the container a copy of the host's address.
        let pasta = start_pasta(
            env,
            d.ns(&host),
            d.ns(&c),
            (&[IPERF_PORT, ECHO_PORT], &[PPS_PORT]),
            HOST_IP,
        )?;
        d.ep.watched.extend(watch("pasta", &pasta));
        d.procs.push(pasta);
        Ok(Box::new(d))
    }
}

/// vswitch: a published port of a container on a vswitch bridge network.
#[derive(Debug)]
pub struct VswitchPublish;

impl Scenario for VswitchPublish {
    fn key(&self) -> &'static str {
        "vswitch-publish"
    }
    fn title(&self) -> &'static str {
        "vswitch"
    }
    fn group(&self) -> &'static str {
        "publish"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn description(&self) -> &'static str {
        "client namespace → host namespace 192.0.2.1:5201/5202, where vswitchd publishes the container's ports (`vswitch run -d -p 5201:5201 -p 5202:5202 -p 5203:5203/udp`, bridge network 10.249.0.0/24, MTU 1500, TAP endpoint) through smoltcp; the loopback row's client is in the host namespace, to 127.0.0.1"
    }
    fn workloads(&self) -> Vec<Workload> {
        publish_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        let (mut d, host_ns) = client_and_host(env, "pv")?;
        let container = d.ep.b_ns.clone();
        let net = format!("nb{}p", env.tag);
        let host = start_vswitchd(env, &mut d, host_ns, None)?;
        publish_on_vswitch(env, host, &container, &net)?;
        Ok(Box::new(d))
    }
}

/// Baseline: pasta's own egress, the container's traffic leaving through
/// pasta's sockets in the host.
#[derive(Debug)]
pub struct PastaEgress;

impl Scenario for PastaEgress {
    fn key(&self) -> &'static str {
        "pasta-egress"
    }
    fn title(&self) -> &'static str {
        "pasta"
    }
    fn group(&self) -> &'static str {
        "egress"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "container namespace attached to `pasta --config-net -t none --netns CONTAINER` (as root, --runas 0, IPv4, tap MTU 65520) in the host namespace; downloads from and uploads to the world namespace 198.51.100.2 (veth to the host) through pasta's host sockets"
    }
    fn workloads(&self) -> Vec<Workload> {
        egress_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        require("pasta", "passt")?;
        let sh = &env.sh;
        let (mut d, host) = world_and_host(env, "ep", USERMODE_MTU)?;
        let host = d.keep(host);
        unanswered_default_route(sh, d.ns(&host), WORLD_LINK_GW, "wl0")?;
        let c = d.keep(Netns::create(sh, d.ep.a_ns.clone())?);
        let pasta = start_pasta(env, d.ns(&host), d.ns(&c), (&[], &[]), HOST_WORLD_IP)?;
        d.ep.watched.extend(watch("pasta", &pasta));
        d.procs.push(pasta);
        Ok(Box::new(d))
    }
}

/// Baseline: slirp4netns attached to the container's namespace.
#[derive(Debug)]
pub struct SlirpEgress;

impl Scenario for SlirpEgress {
    fn key(&self) -> &'static str {
        "slirp4netns-egress"
    }
    fn title(&self) -> &'static str {
        "slirp4netns"
    }
    fn group(&self) -> &'static str {
        "egress"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "container namespace attached to `slirp4netns --configure --mtu=65520 --disable-host-loopback --netns-type=path /run/netns/CONTAINER tap0` in the host namespace (10.0.2.100/24 via 10.0.2.2); downloads from and uploads to the world namespace 198.51.100.2 through slirp's host sockets"
    }
    fn workloads(&self) -> Vec<Workload> {
        egress_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        require("slirp4netns", "slirp4netns")?;
        let sh = &env.sh;
        let (mut d, host) = world_and_host(env, "es", USERMODE_MTU)?;
        let host = d.keep(host);
        let c = d.keep(Netns::create(sh, d.ep.a_ns.clone())?);
        let mtu = format!("--mtu={USERMODE_MTU}");
        let netns = format!("/run/netns/{c}");
        let mut slirp = sh.spawn(
            &in_ns(
                &host,
                &[
                    "slirp4netns",
                    "--configure",
                    &mtu,
                    "--disable-host-loopback",
                    "--netns-type=path",
                    &netns,
                    "tap0",
                ],
            ),
            &format!("slirp4netns-{c}"),
        )?;
        let ready = wait_default_route(sh, &c, &mut slirp);
        d.ep.watched.extend(watch("slirp4netns", &slirp));
        d.procs.push(slirp);
        ready?;
        Ok(Box::new(d))
    }
}

/// vswitch: a container on a vswitch bridge network reaching the world
/// through vswitchd's userspace NAT.
#[derive(Debug)]
pub struct VswitchEgress;

impl Scenario for VswitchEgress {
    fn key(&self) -> &'static str {
        "vswitch-egress"
    }
    fn title(&self) -> &'static str {
        "vswitch"
    }
    fn group(&self) -> &'static str {
        "egress"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn description(&self) -> &'static str {
        "container (`vswitch run -d`) on a vswitch bridge network (10.250.0.0/24, MTU 1500, TAP endpoint), vswitchd in the host namespace; downloads from and uploads to the world namespace 198.51.100.2 through vswitchd's userspace NAT (smoltcp, host sockets)"
    }
    fn workloads(&self) -> Vec<Workload> {
        egress_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        let (mut d, host_ns) = world_and_host(env, "ev", VETH_MTU)?;
        let container = d.ep.a_ns.clone();
        let net = format!("nb{}e", env.tag);
        let host = start_vswitchd(env, &mut d, host_ns, None)?;
        egress_on_vswitch(env, host, &container, &net)?;
        Ok(Box::new(d))
    }
}

/// Baseline: pasta's port forwarding run unprivileged, as rootless Podman
/// runs it.
#[derive(Debug)]
pub struct PastaPublishRootless;

impl Scenario for PastaPublishRootless {
    fn key(&self) -> &'static str {
        "pasta-publish-rootless"
    }
    fn title(&self) -> &'static str {
        "pasta, rootless"
    }
    fn group(&self) -> &'static str {
        "publish-rootless"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "as pasta-publish, but pasta runs as an unprivileged user netbench creates (setpriv), in the host namespace, spawning the container's user and network namespace itself (`pasta --config-net -t 5201,5202 -u 5203 -- sleep N`), which netbench names with `ip netns attach` for the servers"
    }
    fn workloads(&self) -> Vec<Workload> {
        publish_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        require("pasta", "passt")?;
        require("setpriv", "util-linux")?;
        let sh = &env.sh;
        let (mut d, host) = client_and_host(env, "rp")?;
        let host = d.keep(host);
        unanswered_default_route(sh, d.ns(&host), CLIENT_LINK_GW, "cl0")?;
        d.user = Some(User::create(sh, format!("nb{}rp", env.tag))?);
        let user = d.user.as_ref().expect("the user just made");
        let (pasta, c) = start_rootless_pasta(
            env,
            user,
            d.ns(&host),
            &d.ep.b_ns,
            (&[IPERF_PORT, ECHO_PORT], &[PPS_PORT]),
            HOST_IP,
        )?;
        d.ep.watched.extend(watch("pasta", &pasta));
        d.procs.push(pasta);
        d.keep(c);
        Ok(Box::new(d))
    }
}

/// vswitch: a published port of a container of `vswitchd --rootless`.
#[derive(Debug)]
pub struct VswitchPublishRootless;

impl Scenario for VswitchPublishRootless {
    fn key(&self) -> &'static str {
        "vswitch-publish-rootless"
    }
    fn title(&self) -> &'static str {
        "vswitch, rootless"
    }
    fn group(&self) -> &'static str {
        "publish-rootless"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn description(&self) -> &'static str {
        "as vswitch-publish, but `vswitchd --rootless` and `vswitch` run as an unprivileged user netbench creates (setpriv; /dev/net/tun mode 0666), in the host namespace; the container's namespace (inside the daemon's user namespace) named with `ip netns attach` for the servers"
    }
    fn workloads(&self) -> Vec<Workload> {
        publish_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        require("setpriv", "util-linux")?;
        tun_usable_by_everyone()?;
        let (mut d, host_ns) = client_and_host(env, "rv")?;
        let container = d.ep.b_ns.clone();
        let net = format!("nb{}r", env.tag);
        let host = start_vswitchd(env, &mut d, host_ns, Some("rv"))?;
        publish_on_vswitch(env, host, &container, &net)?;
        Ok(Box::new(d))
    }
}

/// Baseline: pasta's egress run unprivileged, as rootless Podman runs it.
#[derive(Debug)]
pub struct PastaEgressRootless;

impl Scenario for PastaEgressRootless {
    fn key(&self) -> &'static str {
        "pasta-egress-rootless"
    }
    fn title(&self) -> &'static str {
        "pasta, rootless"
    }
    fn group(&self) -> &'static str {
        "egress-rootless"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "as pasta-egress, but pasta runs as an unprivileged user netbench creates (setpriv), in the host namespace, spawning the container's user and network namespace itself (`pasta --config-net -t none -u none -- sleep N`)"
    }
    fn workloads(&self) -> Vec<Workload> {
        egress_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        require("pasta", "passt")?;
        require("setpriv", "util-linux")?;
        let sh = &env.sh;
        let (mut d, host) = world_and_host(env, "rq", USERMODE_MTU)?;
        let host = d.keep(host);
        unanswered_default_route(sh, d.ns(&host), WORLD_LINK_GW, "wl0")?;
        d.user = Some(User::create(sh, format!("nb{}rq", env.tag))?);
        let user = d.user.as_ref().expect("the user just made");
        let (pasta, c) = start_rootless_pasta(
            env,
            user,
            d.ns(&host),
            &d.ep.a_ns,
            (&[], &[]),
            HOST_WORLD_IP,
        )?;
        d.ep.watched.extend(watch("pasta", &pasta));
        d.procs.push(pasta);
        d.keep(c);
        Ok(Box::new(d))
    }
}

/// vswitch: a container of `vswitchd --rootless` reaching the world
/// through the rootless daemon's userspace NAT.
#[derive(Debug)]
pub struct VswitchEgressRootless;

impl Scenario for VswitchEgressRootless {
    fn key(&self) -> &'static str {
        "vswitch-egress-rootless"
    }
    fn title(&self) -> &'static str {
        "vswitch, rootless"
    }
    fn group(&self) -> &'static str {
        "egress-rootless"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn description(&self) -> &'static str {
        "as vswitch-egress, but `vswitchd --rootless` and `vswitch` run as an unprivileged user netbench creates (setpriv; /dev/net/tun mode 0666) in the host namespace"
    }
    fn workloads(&self) -> Vec<Workload> {
        egress_workloads()
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        require("setpriv", "util-linux")?;
        tun_usable_by_everyone()?;
        let (mut d, host_ns) = world_and_host(env, "rw", VETH_MTU)?;
        let container = d.ep.a_ns.clone();
        let net = format!("nb{}s", env.tag);
        let host = start_vswitchd(env, &mut d, host_ns, Some("rw"))?;
        egress_on_vswitch(env, host, &container, &net)?;
        Ok(Box::new(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_here_has_its_groups_workloads() {
        let publish: Vec<Box<dyn Scenario>> = vec![
            Box::new(SocatRelay),
            Box::new(PastaPublish),
            Box::new(VswitchPublish),
        ];
        for s in &publish {
            assert_eq!(s.group(), "publish");
            assert_eq!(s.workloads(), publish_workloads(), "{}", s.key());
        }
        let rootless: Vec<Box<dyn Scenario>> = vec![
            Box::new(PastaPublishRootless),
            Box::new(VswitchPublishRootless),
        ];
        for s in &rootless {
            assert_eq!(s.group(), "publish-rootless");
            assert_eq!(s.workloads(), publish_workloads(), "{}", s.key());
        }
        let egress: Vec<Box<dyn Scenario>> = vec![
            Box::new(PastaEgress),
            Box::new(SlirpEgress),
            Box::new(VswitchEgress),
        ];
        for s in &egress {
            assert_eq!(s.group(), "egress");
            assert_eq!(s.workloads(), egress_workloads(), "{}", s.key());
        }
        let rootless: Vec<Box<dyn Scenario>> = vec![
            Box::new(PastaEgressRootless),
            Box::new(VswitchEgressRootless),
        ];
        for s in &rootless {
            assert_eq!(s.group(), "egress-rootless");
            assert_eq!(s.workloads(), egress_workloads(), "{}", s.key());
        }
    }

    #[test]
    fn forwarded_endpoints_listen_everywhere_and_egress_binds_the_world() {
        let p = publish_endpoints("c".into(), "h".into(), "b".into());
        assert_eq!(p.b_ip, IpAddr::V4(HOST_IP));
        assert_eq!(p.loopback_ns.as_deref(), Some("h"));
        assert!(p.server_ip.is_unspecified());
        let e = egress_endpoints("b".into(), "w".into(), 1500);
        assert_eq!(
            (e.b_ip, e.server_ip),
            (IpAddr::V4(WORLD_IP), IpAddr::V4(WORLD_IP))
        );
        // pasta maps its gateway to the host: the world must not be it.
        assert_ne!(WORLD_LINK_GW, WORLD_IP);
        assert_eq!(e.loopback_ns, None);
    }

    #[test]
    fn pasta_port_lists() {
        assert_eq!(pasta_ports(&[]), "none");
        assert_eq!(pasta_ports(&[IPERF_PORT, ECHO_PORT]), "5201,5202");
    }

    #[test]
    fn a_missing_program_is_a_skip_not_a_failure() {
        match require("netbench-no-such-program", "nothing") {
            Err(Error::Unavailable(msg)) => assert!(msg.contains("apt install nothing"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(require("sh", "dash").is_ok());
    }
}
