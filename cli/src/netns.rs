//! Endpoints inside network namespaces: the daemon's view of a sandbox.
//!
//! An endpoint is a persistent TAP device inside a container's network
//! namespace; the daemon holds its file descriptor and switches its frames.
//! This module creates and configures those devices and finds them again
//! after a restart.
//!
//! Namespaces are per *thread* on Linux. Every operation here runs on a
//! short-lived thread that entered the target namespace ([`in_netns`]) and
//! exits afterwards, so the caller's threads never change namespace. The
//! rtnetlink socket is created on that thread too (a netlink socket talks to
//! the namespace it was created in), driven by a current-thread tokio runtime
//! private to the thread. The calls block for a few milliseconds; from async
//! code, call them through `tokio::task::spawn_blocking`.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use switch::tap::{Tap, TapOptions, MAX_IFNAME_LEN};
use switch::MacAddr;

/// The local routing table (`ip route show table local`): addresses of this
/// host, not destinations, so [`host_routes`] leaves it out.
const RT_TABLE_LOCAL: u32 = 255;

/// Smallest MTU IPv4 allows on a link (RFC 791).
const MIN_MTU_V4: u32 = 68;
/// Smallest MTU IPv6 allows on a link (RFC 8200); below it the kernel turns
/// IPv6 off on the device.
const MIN_MTU_V6: u32 = 1280;
/// Largest MTU a TAP device accepts.
const MAX_MTU_TAP: u32 = 65535;
/// How many `ethN` names [`next_ifname`] tries before giving up.
const MAX_ETH_INDEX: u32 = 9999;

/// What went wrong while working inside a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file is missing.
    #[error(
        "network namespace {} does not exist; create it with `ip netns add NAME` or pass --netns /proc/PID/ns/net",
        path.display()
    )]
    NamespaceNotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// The namespace file exists but cannot be opened.
    #[error("cannot open network namespace {}: {source}", path.display())]
    OpenNamespace {
        /// The path that was given.
        path: PathBuf,
        /// Why `open` failed.
        #[source]
        source: io::Error,
    },
    /// The file is not a network namespace (or is a stale `/run/netns` file
    /// whose namespace is gone).
    #[error(
        "{} is not a network namespace (a file left behind after a crash?); remove it and create the namespace again, or pass /proc/PID/ns/net",
        path.display()
    )]
    NotANamespace {
        /// The path that was given.
        path: PathBuf,
    },
    /// `setns` refused to enter the namespace.
    #[error("cannot enter network namespace {}: {source}; vswitchd needs CAP_SYS_ADMIN (run it as root)", path.display())]
    EnterNamespace {
        /// The namespace.
        path: PathBuf,
        /// The error of `setns(2)`.
        #[source]
        source: Errno,
    },
    /// The helper thread could not be started.
    #[error("cannot start a thread to work in network namespace {}: {source}", path.display())]
    Thread {
        /// The namespace (or `.` for the caller's own).
        path: PathBuf,
        /// Why the thread did not start.
        #[source]
        source: io::Error,
    },
    /// The tokio runtime or the netlink socket could not be created.
    #[error("cannot open a netlink socket: {source}")]
    NetlinkSocket {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("cannot {what}: {source}")]
    Netlink {
        /// What was being done, in words ("add 10.0.0.2/24 to eth0 in ...").
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A probe's socket failed (`vswitch doctor`).
    #[error("{what}: {source}")]
    Probe {
        /// What the probe did, in words.
        what: String,
        #[source]
        source: io::Error,
    },
    /// An interface name the kernel would refuse.
    #[error(
        "`{name}` is not a valid interface name: use 1 to 15 characters without `/`, `:` or spaces"
    )]
    InvalidIfname {
        /// The name that was given.
        name: String,
    },
    /// An MTU out of range for the device or its addresses.
    #[error("MTU {mtu} is out of range: {reason}")]
    InvalidMtu {
        /// The MTU that was given.
        mtu: u32,
        /// Which limit it breaks.
        reason: &'static str,
    },
    /// The TAP is held by another open descriptor.
    #[error(
        "TAP {name} in {} is already open in another process or handle (is another vswitchd running?)",
        netns.display()
    )]
    TapBusy {
        /// The interface.
        name: String,
        /// The namespace.
        netns: PathBuf,
    },
    /// An interface of that name exists and is not a TAP.
    #[error("{} already has an interface {name} that is not a TAP; pick another name", netns.display())]
    NotATap {
        /// The interface.
        name: String,
        /// The namespace.
        netns: PathBuf,
    },
    /// [`reopen_tap`] found no device to reopen.
    #[error("there is no interface {name} in {} to reopen; connect the endpoint again", netns.display())]
    NoSuchTap {
        /// The interface.
        name: String,
        /// The namespace.
        netns: PathBuf,
    },
    /// Opening the TAP failed for another reason.
    #[error("cannot open TAP {name} in {}: {source}", netns.display())]
    Tap {
        /// The interface.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// The error of `/dev/net/tun`.
        #[source]
        source: io::Error,
    },
    /// A sysctl under /proc/sys could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Sysctl {
        /// The sysctl file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every `ethN` name is taken.
    #[error("no free interface name eth0..eth{MAX_ETH_INDEX} in {}", netns.display())]
    NoFreeIfname {
        /// The namespace.
        netns: PathBuf,
    },
}

/// How an endpoint's interface looks from inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Interface name in the namespace (`eth0`).
    pub name: String,
    /// Its MAC address.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// Addresses with their subnet prefix (`10.1.0.2/24`, `fd00::2/64`).
    pub addrs: Vec<IpNet>,
    /// IPv4 default route via this gateway; `None` = no IPv4 default route
    /// through this interface.
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 default route via this gateway; `None` = no IPv6 default route
    /// through this interface.
    pub gateway6: Option<Ipv6Addr>,
}

/// Run `f` on a short-lived thread that entered the network namespace at
/// `netns` (`setns(CLONE_NEWNET)`). The caller's thread never changes
/// namespace; the helper thread exits when `f` returns. A panic in `f` is
/// resumed on the caller.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let file = open_netns(netns)?;
    let path = netns.to_path_buf();
    let thread_path = path.clone();
    let thread = std::thread::Builder::new()
        .name("vswitch-netns".into())
        .spawn(move || {
            match nix::sched::setns(&file, CloneFlags::CLONE_NEWNET) {
                Ok(()) => {}
                Err(Errno::EINVAL) => return Err(NetnsError::NotANamespace { path: thread_path }),
                Err(source) => {
                    return Err(NetnsError::EnterNamespace {
                        path: thread_path,
                        source,
                    })
                }
            }
            drop(file);
            f()
        })
        .map_err(|source| NetnsError::Thread { path, source })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Create (or re-attach to) a persistent TAP `cfg.name` in the namespace,
/// configure it through rtnetlink and return the open [`Tap`]; its
/// descriptor works from any thread.
///
/// Configuration: MAC, MTU, IPv6 duplicate address detection off
/// (`accept_dad=0`, addresses added with `IFA_F_NODAD`, so they are usable at
/// once), link up, `lo` up, exactly the addresses of `cfg` (others are
/// removed, IPv6 link-local ones kept), and default routes via the gateways
/// (replacing any default route of the namespace; with `None`, default routes
/// through this interface are removed).
///
/// Idempotent: after a daemon restart the existing device is re-attached and
/// the configuration applied again. It fails with [`NetnsError::TapBusy`]
/// while another descriptor still holds the device. If configuring a device
/// this call created fails, the device is removed again.
pub fn attach_tap(netns: &Path, cfg: &IfaceConfig) -> Result<Tap, NetnsError> {
    attach(netns, cfg, None).map(|mut q| q.swap_remove(0))
}

/// [`attach_tap`] of a multi-queue TAP (`IFF_MULTI_QUEUE`): `queues`
/// descriptors, one per datapath worker, the first of them first. A device
/// an older version made single-queue is attached as it is (one queue).
pub fn attach_tap_queues(
    netns: &Path,
    cfg: &IfaceConfig,
    queues: usize,
) -> Result<Vec<Tap>, NetnsError> {
    attach(netns, cfg, Some(queues))
}

fn attach(netns: &Path, cfg: &IfaceConfig, queues: Option<usize>) -> Result<Vec<Tap>, NetnsError> {
    validate_ifname(&cfg.name)?;
    validate_mtu(cfg)?;
    let cfg = cfg.clone();
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let rtnl = Rtnl::new()?;
        let existed = rtnl.link_index(&cfg.name, &path)?.is_some();
        let tap = open_tap(&path, &cfg.name, queues)?;
        if let Err(err) = rtnl.configure(&path, &cfg) {
            if !existed {
                // Closing a TAP that is not persistent deletes it.
                if let Err(e) = tap[0].set_persist(false) {
                    tracing::warn!(tap = %cfg.name, netns = %path.display(), error = %e,
                        "cannot remove half-configured TAP");
                }
            }
            return Err(err);
        }
        tracing::debug!(tap = %cfg.name, netns = %path.display(), existed, "TAP attached");
        Ok(tap)
    })
}

/// A multi-queue TAP `cfg.name` made in vswitchd's own namespace for a
/// container runtime to move into its sandbox and configure (Docker's
/// `Join`: the runtime renames it, sets its addresses and routes and brings
/// it up). Only its MAC and MTU are set here. The descriptors survive the
/// move into the sandbox and back: frames flow wherever the device is.
/// A device of that name that exists already is refused.
pub fn make_tap_for_runtime(cfg: &IfaceConfig, queues: usize) -> Result<Vec<Tap>, NetnsError> {
    validate_ifname(&cfg.name)?;
    validate_mtu(cfg)?;
    let cfg = cfg.clone();
    let here = PathBuf::from("/proc/self/ns/net");
    on_own_thread("vswitch-netns", move || {
        let rtnl = Rtnl::new()?;
        if rtnl.link_index(&cfg.name, &here)?.is_some() {
            return Err(NetnsError::TapBusy {
                name: cfg.name.clone(),
                netns: here,
            });
        }
        let tap = open_tap(&here, &cfg.name, Some(queues))?;
        let set = || -> Result<(), NetnsError> {
            let index =
                rtnl.link_index(&cfg.name, &here)?
                    .ok_or_else(|| NetnsError::NoSuchTap {
                        name: cfg.name.clone(),
                        netns: here.clone(),
                    })?;
            let link = LinkUnspec::new_with_index(index)
                .address(cfg.mac.0.to_vec())
                .mtu(cfg.mtu)
                .build();
            rtnl.block_on(rtnl.handle.link().set(link).execute())
                .map_err(|e| {
                    netlink_error(
                        format!("set MAC {} and MTU {} of {}", cfg.mac, cfg.mtu, cfg.name),
                        e,
                    )
                })
        };
        if let Err(e) = set() {
            let _ = tap[0].set_persist(false);
            return Err(e);
        }
        Ok(tap)
    })
}

/// The name of the interface whose MAC is `mac` in the namespace, if there
/// is one: a TAP a container runtime renamed (`ethN`) is found again by it.
pub fn link_by_mac(netns: &Path, mac: MacAddr) -> Result<Option<String>, NetnsError> {
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let rtnl = Rtnl::new()?;
        let links: Vec<LinkMessage> = rtnl
            .block_on(rtnl.handle.link().get().execute().try_collect())
            .map_err(|e| netlink_error(format!("list interfaces in {}", path.display()), e))?;
        Ok(links.iter().find_map(|l| {
            let has = l.attributes.iter().any(
                |a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac.0.as_slice()),
            );
            if has {
                link_name(l).map(str::to_string)
            } else {
                None
            }
        }))
    })
}

/// An interface as the kernel has it now (what CNI's CHECK compares).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IfaceState {
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// `IFF_UP`.
    pub up: bool,
    /// Its addresses, IPv6 link-local ones left out.
    pub addrs: Vec<IpNet>,
    /// The main table's routes through it: destination, next hop.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
}

/// The state of interface `name` in the namespace, `None` if there is none.
pub fn iface_state(netns: &Path, name: &str) -> Result<Option<IfaceState>, NetnsError> {
    validate_ifname(name)?;
    let name = name.to_string();
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let rtnl = Rtnl::new()?;
        let ns = path.display();
        let Some(link) = rtnl.link(&name, &path)? else {
            return Ok(None);
        };
        let index = link.header.index;
        let mut state = IfaceState {
            up: link
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up),
            ..IfaceState::default()
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(m) if m.len() == 6 => {
                    let mut b = [0u8; 6];
                    b.copy_from_slice(m);
                    state.mac = Some(MacAddr(b));
                }
                LinkAttribute::Mtu(m) => state.mtu = *m,
                _ => {}
            }
        }
        let addrs: Vec<AddressMessage> = rtnl
            .block_on(
                rtnl.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| netlink_error(format!("list addresses of {name} in {ns}"), e))?;
        state.addrs = addrs
            .iter()
            .filter_map(address_net)
            .filter(|n| !matches!(n.addr(), IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let v6 = family.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
            let routes: Vec<RouteMessage> = rtnl
                .block_on(rtnl.handle.route().get(family).execute().try_collect())
                .map_err(|e| netlink_error(format!("list routes in {ns}"), e))?;
            for r in &routes {
                if route_oif(r) != Some(index)
                    || route_table(r) != u32::from(RouteHeader::RT_TABLE_MAIN)
                {
                    continue;
                }
                let dst = route_prefix(r).unwrap_or(if v6 {
                    IpNet::V6(ipnet::Ipv6Net::default())
                } else {
                    IpNet::V4(ipnet::Ipv4Net::default())
                });
                if matches!(dst.addr(), IpAddr::V6(a) if a.is_unicast_link_local() || a.is_multicast())
                {
                    continue;
                }
                let gw = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
                    _ => None,
                });
                state.routes.push((dst, gw));
            }
        }
        Ok(Some(state))
    })
}

/// Whether the namespace has an interface `name`.
pub fn link_exists(netns: &Path, name: &str) -> Result<bool, NetnsError> {
    validate_ifname(name)?;
    let name = name.to_string();
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        Ok(Rtnl::new()?.link_index(&name, &path)?.is_some())
    })
}

/// Re-open an existing persistent TAP after a daemon restart without changing
/// its configuration. [`NetnsError::NoSuchTap`] if the device is gone.
pub fn reopen_tap(netns: &Path, name: &str) -> Result<Tap, NetnsError> {
    reopen(netns, name, None).map(|mut q| q.swap_remove(0))
}

/// [`reopen_tap`] of a multi-queue TAP: `queues` descriptors (see
/// [`attach_tap_queues`]).
pub fn reopen_tap_queues(netns: &Path, name: &str, queues: usize) -> Result<Vec<Tap>, NetnsError> {
    reopen(netns, name, Some(queues))
}

fn reopen(netns: &Path, name: &str, queues: Option<usize>) -> Result<Vec<Tap>, NetnsError> {
    validate_ifname(name)?;
    let name = name.to_string();
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let rtnl = Rtnl::new()?;
        if rtnl.link_index(&name, &path)?.is_none() {
            // TUNSETIFF would create a fresh, unconfigured device instead.
            return Err(NetnsError::NoSuchTap { name, netns: path });
        }
        open_tap(&path, &name, queues)
    })
}

/// Remove the device (`RTM_DELLINK`). A missing device or namespace is not an
/// error: the endpoint is gone either way.
pub fn remove_tap(netns: &Path, name: &str) -> Result<(), NetnsError> {
    validate_ifname(name)?;
    let name = name.to_string();
    let path = netns.to_path_buf();
    let result = in_netns(netns, move || {
        let rtnl = Rtnl::new()?;
        let Some(index) = rtnl.link_index(&name, &path)? else {
            return Ok(());
        };
        match rtnl.block_on(rtnl.handle.link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(netlink_error(
                format!("delete {name} in {}", path.display()),
                e,
            )),
        }
    });
    match result {
        Err(NetnsError::NamespaceNotFound { .. }) | Err(NetnsError::NotANamespace { .. }) => Ok(()),
        other => other,
    }
}

/// The first free `ethN` name in the namespace (`eth0`, `eth1`, ...).
pub fn next_ifname(netns: &Path) -> Result<String, NetnsError> {
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let rtnl = Rtnl::new()?;
        let names = rtnl.link_names(&path)?;
        (0..=MAX_ETH_INDEX)
            .map(|i| format!("eth{i}"))
            .find(|n| !names.contains(n))
            .ok_or(NetnsError::NoFreeIfname { netns: path })
    })
}

/// Bring the loopback interface of the namespace up, as a container runtime
/// does for a sandbox without other interfaces (`--network none`).
pub fn loopback_up(netns: &Path) -> Result<(), NetnsError> {
    let path = netns.to_path_buf();
    in_netns(netns, move || Rtnl::new()?.loopback_up(&path))
}

/// Prefixes of all routes in the caller's current network namespace, IPv4
/// and IPv6, so IPAM can avoid subnets the host already reaches. Default
/// routes and the local table (the host's own addresses) are left out. Sorted,
/// without duplicates.
pub fn host_routes() -> Result<Vec<IpNet>, NetnsError> {
    on_own_thread("vswitch-routes", || Rtnl::new()?.route_prefixes())
}

/// Runs `f` on a short-lived thread of the caller's namespace: a thread
/// inherits the namespace of the thread that creates it, and a private
/// netlink runtime there cannot collide with the caller's own runtime. A
/// panic in `f` is resumed on the caller.
fn on_own_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| NetnsError::Thread {
            path: PathBuf::from("."),
            source,
        })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Open the namespace file, with a clear error when it does not exist.
fn open_netns(netns: &Path) -> Result<std::fs::File, NetnsError> {
    std::fs::File::open(netns).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::NamespaceNotFound {
            path: netns.to_path_buf(),
        },
        _ => NetnsError::OpenNamespace {
            path: netns.to_path_buf(),
            source,
        },
    })
}

/// Open (create or attach) a persistent TAP in the current thread's namespace.
/// Open (create or attach) a persistent TAP in the current thread's
/// namespace: one single-queue descriptor (`queues` None), or that many
/// queues of a multi-queue device. A single-queue device that already
/// exists is attached as it is, with one descriptor.
fn open_tap(netns: &Path, name: &str, queues: Option<usize>) -> Result<Vec<Tap>, NetnsError> {
    let open = |multi_queue: bool| {
        let opts = TapOptions {
            persist: true,
            // Every frame carries a virtio_net_hdr, and the kernel may hand
            // over partial checksums and 64 KiB super-frames (the
            // datapath's offloads; see `switch::offload`).
            vnet_hdr: true,
            multi_queue,
            ..TapOptions::default()
        };
        Tap::open(name, &opts).and_then(|tap| {
            tap.enable_offloads()?;
            Ok(tap)
        })
    };
    let opened = match queues {
        None => open(false).map(|t| vec![t]),
        Some(n) => match open(true) {
            Ok(first) => {
                let mut all = vec![first];
                for _ in 1..n.max(1) {
                    match open(true) {
                        Ok(t) => all.push(t),
                        Err(e) => {
                            tracing::warn!(tap = name, error = %e, "fewer TAP queues than workers");
                            break;
                        }
                    }
                }
                Ok(all)
            }
            // An existing single-queue device (made before multi-queue).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(false).map(|t| vec![t]),
            Err(e) => Err(e),
        },
    };
    opened.map_err(|source| match source.raw_os_error() {
        Some(libc::EBUSY) => NetnsError::TapBusy {
            name: name.to_string(),
            netns: netns.to_path_buf(),
        },
        Some(libc::EINVAL) => NetnsError::NotATap {
            name: name.to_string(),
            netns: netns.to_path_buf(),
        },
        _ => NetnsError::Tap {
            name: name.to_string(),
            netns: netns.to_path_buf(),
            source,
        },
    })
}

/// Checks an interface name as the kernel would (1 to 15 bytes, no `/`,
/// `:`, NUL or whitespace, not `.` or `..`).
pub fn validate_ifname(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(NetnsError::InvalidIfname {
            name: name.to_string(),
        })
    }
}

fn validate_mtu(cfg: &IfaceConfig) -> Result<(), NetnsError> {
    let mtu = cfg.mtu;
    if mtu < MIN_MTU_V4 {
        return Err(NetnsError::InvalidMtu {
            mtu,
            reason: "IPv4 needs at least 68",
        });
    }
    if mtu > MAX_MTU_TAP {
        return Err(NetnsError::InvalidMtu {
            mtu,
            reason: "a TAP device allows at most 65535",
        });
    }
    let has_v6 = cfg.addrs.iter().any(|a| matches!(a, IpNet::V6(_))) || cfg.gateway6.is_some();
    if has_v6 && mtu < MIN_MTU_V6 {
        return Err(NetnsError::InvalidMtu {
            mtu,
            reason: "IPv6 needs at least 1280",
        });
    }
    Ok(())
}

/// The errno of a netlink error answer, if it is one.
fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn netlink_error(what: String, e: rtnetlink::Error) -> NetnsError {
    let source = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other),
    };
    NetnsError::Netlink { what, source }
}

/// The destination of a route, as a prefix.
fn route_prefix(route: &RouteMessage) -> Option<IpNet> {
    let len = route.header.destination_prefix_length;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
            IpNet::new(IpAddr::V4(*v4), len).ok()
        }
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
            IpNet::new(IpAddr::V6(*v6), len).ok()
        }
        _ => None,
    })
}

/// The routing table of a route (the attribute wins over the 8-bit header).
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// The address and prefix of an address message (IFA_LOCAL for IPv4, where
/// IFA_ADDRESS may be a peer; IFA_ADDRESS for IPv6).
fn address_net(msg: &AddressMessage) -> Option<IpNet> {
    let find = |want_local: bool| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    let ip = find(true).or_else(|| find(false))?;
    IpNet::new(ip, msg.header.prefix_len).ok()
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// An rtnetlink connection on the current thread, with the runtime that
/// drives it. The socket belongs to the namespace of the thread that made it.
struct Rtnl {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Rtnl {
    fn new() -> Result<Rtnl, NetnsError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetnsError::NetlinkSocket { source })?;
        let handle = rt
            .block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(connection);
                Ok::<_, io::Error>(handle)
            })
            .map_err(|source| NetnsError::NetlinkSocket { source })?;
        Ok(Rtnl { rt, handle })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The index of interface `name`, or `None` if there is none.
    fn link_index(&self, name: &str, netns: &Path) -> Result<Option<u32>, NetnsError> {
        Ok(self.link(name, netns)?.map(|msg| msg.header.index))
    }

    /// Interface `name`, or `None` if there is none.
    fn link(&self, name: &str, netns: &Path) -> Result<Option<LinkMessage>, NetnsError> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match self.block_on(async {
            futures::pin_mut!(req);
            req.try_next().await
        }) {
            Ok(msg) => Ok(msg),
            Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(
                format!("look up {name} in {}", netns.display()),
                e,
            )),
        }
    }

    fn link_names(&self, netns: &Path) -> Result<BTreeSet<String>, NetnsError> {
        let links: Vec<LinkMessage> = self
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(|e| netlink_error(format!("list interfaces in {}", netns.display()), e))?;
        Ok(links
            .iter()
            .filter_map(link_name)
            .map(str::to_string)
            .collect())
    }

    /// Apply `cfg` to the interface `cfg.name` (which exists).
    fn configure(&self, netns: &Path, cfg: &IfaceConfig) -> Result<(), NetnsError> {
        let name = cfg.name.as_str();
        let ns = netns.display();
        let index = self
            .link_index(name, netns)?
            .ok_or_else(|| NetnsError::NoSuchTap {
                name: name.to_string(),
                netns: netns.to_path_buf(),
            })?;

        // Before the link comes up, so not even the link-local address waits.
        disable_dad(name)?;

        let link = LinkUnspec::new_with_index(index)
            .address(cfg.mac.0.to_vec())
            .mtu(cfg.mtu)
            .up()
            .build();
        self.block_on(self.handle.link().set(link).execute())
            .map_err(|e| {
                netlink_error(
                    format!(
                        "set MAC {} and MTU {} and bring up {name} in {ns}",
                        cfg.mac, cfg.mtu
                    ),
                    e,
                )
            })?;

        self.loopback_up(netns)?;

        self.sync_addresses(netns, index, cfg)?;
        self.sync_default_route(netns, index, cfg)
    }

    /// Bring `lo` up (a fresh namespace has it down).
    fn loopback_up(&self, netns: &Path) -> Result<(), NetnsError> {
        let ns = netns.display();
        match self.link_index("lo", netns)? {
            Some(lo) => {
                let up = LinkUnspec::new_with_index(lo).up().build();
                self.block_on(self.handle.link().set(up).execute())
                    .map_err(|e| netlink_error(format!("bring up lo in {ns}"), e))
            }
            None => {
                tracing::warn!(netns = %ns, "namespace has no loopback interface");
                Ok(())
            }
        }
    }

    /// Make the interface's addresses exactly `cfg.addrs` (IPv6 link-local
    /// addresses are the kernel's and stay).
    fn sync_addresses(
        &self,
        netns: &Path,
        index: u32,
        cfg: &IfaceConfig,
    ) -> Result<(), NetnsError> {
        let name = cfg.name.as_str();
        let ns = netns.display();
        let current: Vec<AddressMessage> = self
            .block_on(
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| netlink_error(format!("list addresses of {name} in {ns}"), e))?;
        for msg in current {
            let Some(net) = address_net(&msg) else {
                continue;
            };
            let link_local = matches!(net.addr(), IpAddr::V6(v6) if v6.is_unicast_link_local());
            if link_local || cfg.addrs.contains(&net) {
                continue;
            }
            match self.block_on(self.handle.address().del(msg).execute()) {
                Ok(()) => {}
                Err(e) if nl_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(netlink_error(
                        format!("remove stale address {net} from {name} in {ns}"),
                        e,
                    ))
                }
            }
        }

        for net in &cfg.addrs {
            let mut req = self
                .handle
                .address()
                .add(index, net.addr(), net.prefix_len())
                .replace();
            if net.addr().is_ipv6() {
                let msg = req.message_mut();
                msg.header.flags |= AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            self.block_on(req.execute())
                .map_err(|e| netlink_error(format!("add address {net} to {name} in {ns}"), e))?;
        }
        Ok(())
    }

    /// Install (replace) or remove the default routes through this interface.
    fn sync_default_route(
        &self,
        netns: &Path,
        index: u32,
        cfg: &IfaceConfig,
    ) -> Result<(), NetnsError> {
        let name = cfg.name.as_str();
        let ns = netns.display();
        if let Some(gw) = cfg.gateway4 {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            self.block_on(self.handle.route().add(route).replace().execute())
                .map_err(|e| {
                    netlink_error(format!("add default route via {gw} on {name} in {ns}"), e)
                })?;
        } else {
            self.remove_default_routes(
                netns,
                index,
                name,
                RouteMessageBuilder::<Ipv4Addr>::new().build(),
            )?;
        }
        if let Some(gw) = cfg.gateway6 {
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            self.block_on(self.handle.route().add(route).replace().execute())
                .map_err(|e| {
                    netlink_error(format!("add default route via {gw} on {name} in {ns}"), e)
                })?;
        } else {
            self.remove_default_routes(
                netns,
                index,
                name,
                RouteMessageBuilder::<Ipv6Addr>::new().build(),
            )?;
        }
        Ok(())
    }

    /// Delete the main-table default routes of one family through `index`.
    fn remove_default_routes(
        &self,
        netns: &Path,
        index: u32,
        name: &str,
        family: RouteMessage,
    ) -> Result<(), NetnsError> {
        let ns = netns.display();
        let routes: Vec<RouteMessage> = self
            .block_on(self.handle.route().get(family).execute().try_collect())
            .map_err(|e| netlink_error(format!("list routes in {ns}"), e))?;
        for route in routes {
            let is_default = route.header.destination_prefix_length == 0
                && route_table(&route) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && route_oif(&route) == Some(index);
            if !is_default {
                continue;
            }
            match self.block_on(self.handle.route().del(route).execute()) {
                Ok(()) => {}
                Err(e) if nl_errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(netlink_error(
                        format!("remove default route of {name} in {ns}"),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Destination prefixes of every route, see [`host_routes`].
    fn route_prefixes(&self) -> Result<Vec<IpNet>, NetnsError> {
        let mut out = BTreeSet::new();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .block_on(self.handle.route().get(family).execute().try_collect())
                .map_err(|e| netlink_error("list the host's routes".to_string(), e))?;
            for route in &routes {
                let wanted_kind = matches!(
                    route.header.kind,
                    RouteType::Unicast
                        | RouteType::BlackHole
                        | RouteType::Unreachable
                        | RouteType::Prohibit
                );
                if !wanted_kind || route_table(route) == RT_TABLE_LOCAL {
                    continue;
                }
                if let Some(net) = route_prefix(route) {
                    if net.prefix_len() > 0 {
                        out.insert(net.trunc());
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Turn IPv6 duplicate address detection off on `ifname` in the current
/// thread's namespace (/proc/sys/net resolves against the calling thread's
/// namespace). Missing when IPv6 is disabled: nothing to do then.
fn disable_dad(ifname: &str) -> Result<(), NetnsError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"));
    match std::fs::write(&path, b"0\n") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Sysctl { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn cfg(mtu: u32, addrs: &[&str], gateway6: Option<Ipv6Addr>) -> IfaceConfig {
        IfaceConfig {
            name: "eth0".into(),
            mac: MacAddr([0x02, 0x42, 0, 0, 0, 1]),
            mtu,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            gateway4: None,
            gateway6,
        }
    }

    #[rstest]
    #[case::v4_min(68, &["10.0.0.2/24"], None, true)]
    #[case::v4_too_small(67, &["10.0.0.2/24"], None, false)]
    #[case::too_big(65536, &[], None, false)]
    #[case::tap_max(65535, &["10.0.0.2/24"], None, true)]
    #[case::v6_too_small(1279, &["fd00::2/64"], None, false)]
    #[case::v6_gateway_too_small(1279, &[], Some(Ipv6Addr::LOCALHOST), false)]
    #[case::v6_ok(1280, &["fd00::2/64", "10.0.0.2/24"], None, true)]
    fn mtu_limits(
        #[case] mtu: u32,
        #[case] addrs: &[&str],
        #[case] gw6: Option<Ipv6Addr>,
        #[case] ok: bool,
    ) {
        assert_eq!(validate_mtu(&cfg(mtu, addrs, gw6)).is_ok(), ok);
    }

    #[rstest]
    #[case("eth0", true)]
    #[case("abcdefghijklmno", true)]
    #[case("abcdefghijklmnop", false)]
    #[case("", false)]
    #[case("a/b", false)]
    #[case("eth0:1", false)]
    #[case("..", false)]
    fn interface_names(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(validate_ifname(name).is_ok(), ok);
    }

    #[test]
    fn missing_namespace_is_a_sentence_naming_the_fix() {
        let path = Path::new("/run/netns/vswitch-test-does-not-exist-0");
        let err = in_netns(path, || Ok(())).unwrap_err();
        assert!(matches!(err, NetnsError::NamespaceNotFound { .. }));
        let text = err.to_string();
        assert!(
            text.contains("/run/netns/vswitch-test-does-not-exist-0 does not exist"),
            "{text}"
        );
        assert!(text.contains("ip netns add"), "{text}");
        // Removing from a namespace that is gone is not an error.
        remove_tap(path, "eth0").unwrap();
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        // Any readable non-namespace file: setns answers EINVAL.
        let err = in_netns(Path::new("/proc/self/status"), || Ok(())).unwrap_err();
        match err {
            NetnsError::NotANamespace { .. } => {}
            // Without CAP_SYS_ADMIN the kernel answers EPERM first.
            NetnsError::EnterNamespace { source, .. } => assert_eq!(source, Errno::EPERM),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn in_netns_runs_the_closure_and_returns_its_value() {
        // Our own namespace, entered again: always allowed for root, and the
        // closure's result comes back.
        let result = in_netns(Path::new("/proc/self/ns/net"), || Ok(41 + 1));
        match result {
            Ok(v) => assert_eq!(v, 42),
            Err(NetnsError::EnterNamespace { source, .. }) => assert_eq!(source, Errno::EPERM),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn host_routes_are_prefixes_without_defaults() {
        let routes = host_routes().unwrap();
        for net in &routes {
            assert!(net.prefix_len() > 0, "{net}");
            assert_eq!(*net, net.trunc(), "{net}");
        }
        let mut sorted = routes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, routes);
    }

    #[test]
    fn route_and_address_helpers_read_the_right_attributes() {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 1, 2, 0), 24)
            .output_interface(7)
            .build();
        assert_eq!(route_prefix(&route), Some("10.1.2.0/24".parse().unwrap()));
        assert_eq!(route_oif(&route), Some(7));
        assert_eq!(route_table(&route), 254);
        route.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(route_table(&route), 1000);

        let mut addr = AddressMessage::default();
        addr.header.prefix_len = 24;
        addr.attributes
            .push(AddressAttribute::Address("10.9.9.9".parse().unwrap()));
        addr.attributes
            .push(AddressAttribute::Local("10.1.1.2".parse().unwrap()));
        assert_eq!(address_net(&addr), Some("10.1.1.2/24".parse().unwrap()));
    }
}
