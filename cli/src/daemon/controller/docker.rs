//! Docker's networks on vswitch: the remote network driver's and IPAM
//! driver's calls (decoded by `daemon::docker::protocol`) made into the
//! controller's own steps, so a Docker container is an endpoint like any
//! other: it is connected through the same driver seam, IPAM, datapath
//! and rollback as `vswitch network connect`.
//!
//! How Docker's objects map onto vswitch's:
//! - an IPAM pool (`RequestPool`) is a subnet; the addresses Docker asks
//!   for (`RequestAddress`) are allocated in the vswitch network the pool
//!   belongs to once Docker's network exists, by that network's driver
//!   (cluster-wide on overlays), and stay allocated until Docker releases
//!   them, whatever happens to the endpoint meanwhile;
//! - a Docker network (`CreateNetwork`) is the vswitch network named by
//!   `-o vswitch.name` (made if it does not exist, found if it does: a
//!   network of the vswitch CLI, or an overlay another host made);
//! - an endpoint (`CreateEndpoint`) is a record until `Join`, which
//!   connects the sandbox as container `docker-SANDBOX` with a TAP made in
//!   vswitchd's namespace ([`Placement::Runtime`]) for Docker to move in;
//!   `Leave` disconnects it;
//! - published ports arrive with `ProgramExternalConnectivity` and are
//!   forwarded by the userspace forwarder, as `-p` of `vswitch run`.
//!
//! Every record is durable (the store's `docker` table), so a restarted
//! vswitchd answers for what Docker made before.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::json;

use super::drivers::Want;
use super::endpoints::Placement;
use super::*;
use crate::daemon::docker::protocol::{
    self, Call, CreateEndpoint, CreateNetwork, EndpointRef, External, Join, RequestAddress,
    RequestPool,
};
use crate::daemon::state::{DockerEndpoint, DockerNetwork, DockerPool, DockerRecord};

/// The `-o` options a Docker network takes; the rest are refused.
const OPTIONS: &str = "vswitch.name=NAME, vswitch.driver=bridge|overlay, encrypted, transport=udp|quic, vni=N and com.docker.network.driver.mtu=N";

/// What the plugin keeps of Docker's objects.
#[derive(Debug, Default)]
pub(super) struct DockerState {
    pools: BTreeMap<String, DockerPool>,
    networks: BTreeMap<String, DockerNetwork>,
    endpoints: BTreeMap<String, DockerEndpoint>,
}

impl DockerState {
    /// Whether Docker's IPAM holds `ip` of the vswitch network `network`
    /// (so an endpoint using it neither allocates nor releases it).
    pub(super) fn holds(&self, network: &str, ip: IpAddr) -> bool {
        self.pools
            .values()
            .any(|p| p.network.as_deref() == Some(network) && p.held.iter().any(|(a, _)| *a == ip))
    }

    /// Makes `r` the live record of its kind.
    fn insert(&mut self, r: DockerRecord) {
        match r {
            DockerRecord::Pool(p) => {
                self.pools.insert(p.id.clone(), p);
            }
            DockerRecord::Network(n) => {
                self.networks.insert(n.id.clone(), n);
            }
            DockerRecord::Endpoint(e) => {
                self.endpoints.insert(e.id.clone(), e);
            }
        }
    }

    /// The pools holding addresses Docker's endpoint `endpoint` uses.
    fn pools_of(&self, endpoint: &str) -> Vec<DockerPool> {
        self.pools
            .values()
            .filter(|p| p.held.iter().any(|(_, o)| o.as_deref() == Some(endpoint)))
            .cloned()
            .collect()
    }

    /// Whether `ifname` is the TAP of a Docker endpoint.
    pub(super) fn is_endpoint_tap(&self, ifname: &str) -> bool {
        self.endpoints.values().any(|d| d.ifname == ifname)
    }

    /// The Docker network on vswitch network `name`, if there is one.
    pub(super) fn network_on(&self, name: &str) -> Option<&DockerNetwork> {
        self.networks.values().find(|n| n.name == name)
    }
}

fn unknown_network(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Docker network {} is unknown to vswitch (was it made while vswitchd ran with another --state-dir?)",
        short(id)
    ))
}

fn unknown_endpoint(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Docker endpoint {} is unknown to vswitch",
        short(id)
    ))
}

fn unknown_pool(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "address pool `{}` is not one of vswitch's",
        id.escape_debug()
    ))
}

/// The first 12 characters of a Docker id, as Docker shows them.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The vswitch container a Docker sandbox is connected as.
fn sandbox_container(sandbox: &Path) -> Result<String, ApiError> {
    let base = sandbox
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let name = format!("docker-{}", &base[..base.len().min(40)]);
    api::validate_name("container", &name).map_err(|_| {
        ApiError::bad(format!(
            "SandboxKey {} does not end in a sandbox id",
            sandbox.display()
        ))
    })?;
    Ok(name)
}

/// An address with the prefix of `subnet`, as IPAM answers (`A.B.C.D/NN`).
fn with_prefix(ip: IpAddr, subnet: IpNet) -> String {
    format!("{ip}/{}", subnet.prefix_len())
}

impl ControlPlane {
    /// Answers one call of Docker's plugin protocol. A panic is handled as
    /// for API requests: undone where it kept an undo list, answered, and
    /// the daemon stops.
    pub fn handle_docker(&self, call: Call) -> Result<Value, ApiError> {
        match catch_unwind(AssertUnwindSafe(|| {
            let result = self.docker_dispatch(call);
            if let Ok(mut c) = self.lock() {
                c.sync_policies();
            }
            result
        })) {
            Ok(result) => result,
            Err(panic) => Err(self.panicked(&*panic)),
        }
    }

    fn docker_dispatch(&self, call: Call) -> Result<Value, ApiError> {
        Ok(match call {
            Call::Activate => json!({ "Implements": protocol::IMPLEMENTS }),
            // Networks are made on each host by its own Docker (no Swarm,
            // no KV store): local to Docker, global in reach.
            Call::NetworkCapabilities => json!({ "Scope": "local", "ConnectivityScope": "global" }),
            Call::IpamCapabilities => json!({ "RequiresMACAddress": false }),
            Call::DefaultAddressSpaces => json!({
                "LocalDefaultAddressSpace": protocol::LOCAL_SPACE,
                "GlobalDefaultAddressSpace": protocol::GLOBAL_SPACE,
            }),
            Call::DiscoverNew | Call::DiscoverDelete | Call::FreeNetwork { .. } => json!({}),
            Call::AllocateNetwork { .. } => json!({ "Options": {} }),
            Call::RequestPool(r) => self.lock()?.docker_request_pool(r)?,
            Call::ReleasePool { pool } => self.lock()?.docker_release_pool(&pool)?,
            Call::RequestAddress(r) => self.lock()?.docker_request_address(r)?,
            Call::ReleaseAddress { pool, address } => {
                self.lock()?.docker_release_address(&pool, address)?
            }
            Call::CreateNetwork(c) => self.lock()?.docker_create_network(c)?,
            Call::DeleteNetwork { network } => self.lock()?.docker_delete_network(&network)?,
            Call::CreateEndpoint(e) => self.lock()?.docker_create_endpoint(e)?,
            Call::EndpointOperInfo(e) => self.lock()?.docker_endpoint_info(&e)?,
            Call::DeleteEndpoint(e) => self.docker_delete_endpoint(&e)?,
            Call::Join(j) => self.docker_join(j)?,
            Call::Leave(e) => self.docker_leave(&e)?,
            Call::ProgramExternalConnectivity(x) => self.lock()?.docker_publish(x)?,
            Call::RevokeExternalConnectivity(e) => self.lock()?.docker_revoke(&e)?,
        })
    }

    /// `Join`: the sandbox connected, its TAP made for Docker to move in.
    fn docker_join(&self, j: Join) -> Result<Value, ApiError> {
        let (network, req, ifname, gateway4, gateway6) = {
            let c = self.lock()?;
            let ep = c
                .docker
                .endpoints
                .get(&j.endpoint)
                .ok_or_else(|| unknown_endpoint(&j.endpoint))?;
            if ep.network != j.network {
                return Err(ApiError::bad(format!(
                    "Docker endpoint {} belongs to network {}, not {}",
                    short(&j.endpoint),
                    short(&ep.network),
                    short(&j.network)
                )));
            }
            if ep.container.is_some() {
                return Err(ApiError::conflict(format!(
                    "Docker endpoint {} has joined a sandbox already",
                    short(&j.endpoint)
                )));
            }
            let network = c
                .docker
                .networks
                .get(&j.network)
                .ok_or_else(|| unknown_network(&j.network))?
                .name
                .clone();
            let n = c.network(&network)?;
            let (gateway4, gateway6) = if n.record.internal {
                (None, None)
            } else {
                (n.gateway4(), n.gateway6())
            };
            // A sandbox on a second network is the same container.
            let container = match c
                .containers
                .values()
                .find(|r| r.netns.as_deref() == Some(j.sandbox.as_path()))
            {
                Some(r) => r.name.clone(),
                None => sandbox_container(&j.sandbox)?,
            };
            let req = api::Connect {
                container,
                netns: Some(j.sandbox.clone()),
                ip: ep.ipv4.and_then(|a| match a.addr() {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                }),
                ip6: ep.ipv6.and_then(|a| match a.addr() {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                }),
                mac: Some(MacAddr(ep.mac).to_string()),
                aliases: Vec::new(),
                ports: Vec::new(),
                labels: Default::default(),
            };
            (network, req, ep.ifname.clone(), gateway4, gateway6)
        };
        let container = req.container.clone();
        self.connect_placed(
            &network,
            req,
            Placement::Runtime {
                ifname: ifname.clone(),
            },
        )?;
        let joined = self.lock().and_then(|mut c| {
            let mut ep = c
                .docker
                .endpoints
                .get(&j.endpoint)
                .cloned()
                .ok_or_else(|| unknown_endpoint(&j.endpoint))?;
            ep.container = Some(container.clone());
            c.docker_put(DockerRecord::Endpoint(ep))
        });
        if let Err(e) = joined {
            let _ = self.disconnect(&network, &container);
            return Err(e);
        }
        tracing::info!(endpoint = short(&j.endpoint), %network, %container,
            sandbox = %j.sandbox.display(), %ifname, "Docker endpoint joined");
        Ok(json!({
            "InterfaceName": { "SrcName": ifname, "DstPrefix": "eth" },
            "Gateway": gateway4.map(|g| g.to_string()).unwrap_or_default(),
            "GatewayIPv6": gateway6.map(|g| g.to_string()).unwrap_or_default(),
            "StaticRoutes": [],
            // The gateway is vswitch's: no docker_gwbridge.
            "DisableGatewayService": true,
        }))
    }

    /// What Docker's API said of a joined endpoint (see
    /// [`Controller::docker_named`]); then the name Docker gave the TAP in
    /// the sandbox (`ethN`) is learnt, by its MAC, without the lock.
    pub fn docker_named(
        &self,
        endpoint: &str,
        names: crate::daemon::docker::DockerNames,
    ) -> Result<(), ApiError> {
        let found = {
            let mut c = self.lock()?;
            c.docker_named(endpoint, &names.name, names.aliases)?;
            c.docker_labelled(endpoint, names.labels)?;
            // Its name and labels may be what a policy selects.
            c.sync_policies();
            c.docker_endpoint_place(endpoint)
        };
        let Some((network, container, netns, mac)) = found else {
            return Ok(());
        };
        // Docker moves the TAP in when the sandbox's namespace is made,
        // which may be just after the container shows in its network.
        for _ in 0..50 {
            if let Ok(Some(ifname)) = netns::link_by_mac(&netns, mac) {
                return self.lock()?.set_ifname(&network, &container, &ifname);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::debug!(
            endpoint = short(endpoint),
            "the TAP's name in the sandbox was not learnt"
        );
        Ok(())
    }

    /// `Leave`: the endpoint disconnected (Docker has moved its TAP out of
    /// the sandbox by now, or the sandbox is gone with it).
    fn docker_leave(&self, e: &EndpointRef) -> Result<Value, ApiError> {
        let (network, container) = {
            let c = self.lock()?;
            let ep = c
                .docker
                .endpoints
                .get(&e.endpoint)
                .ok_or_else(|| unknown_endpoint(&e.endpoint))?;
            let Some(container) = ep.container.clone() else {
                return Ok(json!({}));
            };
            let network = c
                .docker
                .networks
                .get(&ep.network)
                .ok_or_else(|| unknown_network(&ep.network))?
                .name
                .clone();
            (network, container)
        };
        match self.disconnect(&network, &container) {
            Ok(()) => {}
            // Disconnected by other means (`vswitch network disconnect`).
            Err(err) if err.status == 404 => {}
            Err(err) => return Err(err),
        }
        let mut c = self.lock()?;
        if let Some(mut ep) = c.docker.endpoints.get(&e.endpoint).cloned() {
            ep.container = None;
            c.docker_put(DockerRecord::Endpoint(ep))?;
        }
        tracing::info!(endpoint = short(&e.endpoint), %network, %container, "Docker endpoint left");
        Ok(json!({}))
    }

    /// `DeleteEndpoint`: the record goes (after a `Leave` Docker did not
    /// send, if need be); its addresses stay with Docker's IPAM until
    /// Docker releases them.
    fn docker_delete_endpoint(&self, e: &EndpointRef) -> Result<Value, ApiError> {
        let joined = self
            .lock()?
            .docker
            .endpoints
            .get(&e.endpoint)
            .is_some_and(|ep| ep.container.is_some());
        if joined {
            self.docker_leave(e)?;
        }
        let mut c = self.lock()?;
        let Some(ep) = c.docker.endpoints.get(&e.endpoint).cloned() else {
            // Gone already: deleting twice is not an error.
            return Ok(json!({}));
        };
        c.docker_delete(&DockerRecord::Endpoint(ep))?;
        let owned = c.docker.pools_of(&e.endpoint);
        for mut p in owned {
            for (_, o) in p.held.iter_mut() {
                if o.as_deref() == Some(&e.endpoint) {
                    *o = None;
                }
            }
            c.docker_put(DockerRecord::Pool(p))?;
        }
        Ok(json!({}))
    }
}

impl Controller {
    /// Docker's endpoints follow a container's new name.
    pub(super) fn docker_container_renamed(&mut self, old: &str, new: &str) {
        let moved: Vec<DockerEndpoint> = self
            .docker
            .endpoints
            .values()
            .filter(|e| e.container.as_deref() == Some(old))
            .cloned()
            .collect();
        for mut e in moved {
            e.container = Some(new.to_string());
            if let Err(err) = self.docker_put(DockerRecord::Endpoint(e)) {
                tracing::error!(error = %err, "storing a renamed Docker endpoint");
            }
        }
    }

    /// What Docker's API says of a joined endpoint: its container's name
    /// and its aliases on the network. The sandbox's container takes the
    /// name (unless another container has it) and the endpoint the
    /// aliases, for DNS here and, on overlays, on every host.
    fn docker_named(
        &mut self,
        endpoint: &str,
        name: &str,
        aliases: Vec<String>,
    ) -> Result<(), ApiError> {
        let ep = self
            .docker
            .endpoints
            .get(endpoint)
            .ok_or_else(|| unknown_endpoint(endpoint))?;
        let Some(mut container) = ep.container.clone() else {
            return Ok(());
        };
        let network = self
            .docker
            .networks
            .get(&ep.network)
            .ok_or_else(|| unknown_network(&ep.network))?
            .name
            .clone();
        match self.rename_container(&container, name) {
            Ok(()) => container = name.to_string(),
            Err(e) => {
                tracing::warn!(%container, name, error = %e, "Docker's container name not taken")
            }
        }
        let mut aliases: Vec<String> = aliases
            .into_iter()
            .filter(|a| a != &container && api::validate_name("alias", a).is_ok())
            .collect();
        if container != name && api::validate_name("alias", name).is_ok() {
            aliases.insert(0, name.to_string());
        }
        aliases.dedup();
        self.set_aliases(&network, &container, aliases)
    }

    /// Gives a joined endpoint's container the labels Docker gave it
    /// (`docker run --label`); labels vswitch cannot keep (too many, too
    /// long) are logged and left out.
    fn docker_labelled(
        &mut self,
        endpoint: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let Some(container) = self
            .docker
            .endpoints
            .get(endpoint)
            .and_then(|ep| ep.container.clone())
        else {
            return Ok(());
        };
        if let Err(e) = switch::policy::spec::check_labels(&labels) {
            tracing::warn!(%container, error = %e, "Docker's labels not taken");
            return Ok(());
        }
        let Some(rec) = self.containers.get_mut(&container) else {
            return Ok(());
        };
        if rec.labels == labels {
            return Ok(());
        }
        rec.labels = labels;
        let rec = rec.clone();
        self.store.put_container(&rec).map_err(internal)
    }

    /// A joined endpoint's vswitch network, container, sandbox and MAC.
    fn docker_endpoint_place(&self, endpoint: &str) -> Option<(String, String, PathBuf, MacAddr)> {
        let ep = self.docker.endpoints.get(endpoint)?;
        let container = ep.container.clone()?;
        let network = self.docker.networks.get(&ep.network)?.name.clone();
        let netns = self.containers.get(&container)?.netns.clone()?;
        Some((network, container, netns, MacAddr(ep.mac)))
    }

    /// Stores an endpoint's interface name as the runtime named it.
    fn set_ifname(&mut self, network: &str, container: &str, ifname: &str) -> Result<(), ApiError> {
        let Some(ep) = self
            .networks
            .get_mut(network)
            .and_then(|n| n.endpoints.get_mut(container))
        else {
            return Ok(());
        };
        if ep.record.ifname == ifname {
            return Ok(());
        }
        ep.record.ifname = ifname.to_string();
        let record = ep.record.clone();
        self.store.put_endpoint(&record).map_err(internal)
    }

    /// Stores a record and makes it the live one.
    fn docker_put(&mut self, r: DockerRecord) -> Result<(), ApiError> {
        self.store.put_docker(&r).map_err(internal)?;
        self.docker.insert(r);
        Ok(())
    }

    fn docker_delete(&mut self, r: &DockerRecord) -> Result<(), ApiError> {
        self.store.delete_docker(&r.key()).map_err(internal)?;
        match r {
            DockerRecord::Pool(p) => self.docker.pools.remove(&p.id).map(drop),
            DockerRecord::Network(n) => self.docker.networks.remove(&n.id).map(drop),
            DockerRecord::Endpoint(e) => self.docker.endpoints.remove(&e.id).map(drop),
        };
        Ok(())
    }

    /// `RequestPool`: the subnet asked for, or one of vswitch's choice;
    /// identical requests share one pool.
    fn docker_request_pool(&mut self, r: RequestPool) -> Result<Value, ApiError> {
        let family = if r.v6 {
            ipam::Family::V6
        } else {
            ipam::Family::V4
        };
        // `--ipam-opt vswitch.name=NAME`: the subnet of that network, so a
        // second host need not repeat --subnet.
        let named = match r.options.get("vswitch.name") {
            Some(name) => {
                let n = self.network(name)?;
                let s = if r.v6 {
                    n.subnet6().map(IpNet::V6)
                } else {
                    n.subnet4().map(IpNet::V4)
                };
                Some(s.ok_or_else(|| {
                    ApiError::bad(format!(
                        "network `{name}` has no {} subnet",
                        if r.v6 { "IPv6" } else { "IPv4" }
                    ))
                })?)
            }
            None => None,
        };
        for key in r.options.keys() {
            if key != "vswitch.name" {
                return Err(ApiError::bad(format!(
                    "unknown IPAM option `{key}`; vswitch's IPAM takes vswitch.name=NAME"
                )));
            }
        }
        let subnet = match (r.pool, named) {
            (Some(p), Some(n)) if p != n => {
                return Err(ApiError::bad(format!(
                "--subnet {p} is not the subnet {n} of the vswitch network named by vswitch.name"
            )))
            }
            (Some(p), _) => p,
            (None, Some(n)) => n,
            (None, None) => self.docker_choose_subnet(family)?,
        };
        let id = match r.sub_pool {
            Some(s) => format!("vswitch/{subnet}/{s}"),
            None => format!("vswitch/{subnet}"),
        };
        let pool = match self.docker.pools.get(&id) {
            Some(p) => DockerPool {
                refs: p.refs + 1,
                ..p.clone()
            },
            None => {
                if let Some(other) = self.docker.pools.values().find(|p| {
                    p.subnet.contains(&subnet.network()) || subnet.contains(&p.subnet.network())
                }) {
                    if other.subnet != subnet {
                        return Err(ApiError::conflict(format!(
                            "pool {subnet} overlaps the pool {} of another Docker network",
                            other.subnet
                        )));
                    }
                }
                DockerPool {
                    id: id.clone(),
                    subnet,
                    ip_range: r.sub_pool,
                    gateway: None,
                    network: None,
                    held: Vec::new(),
                    pending: Vec::new(),
                    refs: 1,
                }
            }
        };
        self.docker_put(DockerRecord::Pool(pool))?;
        Ok(json!({ "PoolID": id, "Pool": subnet.to_string(), "Data": {} }))
    }

    /// A subnet no network, pool or host route overlaps.
    fn docker_choose_subnet(&self, family: ipam::Family) -> Result<IpNet, ApiError> {
        let mut taken: Vec<IpNet> = self
            .ipam
            .networks()
            .flat_map(|(_, subnets)| subnets.iter().map(ipam::Subnet::subnet))
            .chain(self.docker.pools.values().map(|p| p.subnet))
            .collect();
        taken.extend(netns::host_routes().unwrap_or_default());
        self.ipam
            .pools()
            .choose(family, &random_id(), &taken)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "vswitch's address pools have no free {} subnet left; pass --subnet",
                    match family {
                        ipam::Family::V4 => "IPv4",
                        ipam::Family::V6 => "IPv6",
                    }
                ))
            })
    }

    /// `ReleasePool`: the last release gives back every address still held.
    fn docker_release_pool(&mut self, id: &str) -> Result<Value, ApiError> {
        let mut pool = self
            .docker
            .pools
            .get(id)
            .cloned()
            .ok_or_else(|| unknown_pool(id))?;
        if pool.refs > 1 {
            pool.refs -= 1;
            self.docker_put(DockerRecord::Pool(pool))?;
            return Ok(json!({}));
        }
        let held: Vec<IpAddr> = pool.held.iter().map(|(a, _)| *a).collect();
        self.docker_delete(&DockerRecord::Pool(pool.clone()))?;
        if let Some(network) = &pool.network {
            for a in held {
                self.docker_give_back(network, a);
            }
        }
        Ok(json!({}))
    }

    /// Gives an address back to the network's driver, unless an endpoint
    /// still uses it (it is then released when that endpoint goes).
    fn docker_give_back(&mut self, network: &str, a: IpAddr) {
        let Some(n) = self.networks.get(network) else {
            return;
        };
        if !n.uses(a) {
            let kind = n.record.driver;
            drivers::of(kind).release(self, network, a);
        }
    }

    /// `RequestAddress`: the gateway (answered from the pool: it is the
    /// network's, not allocated), an `--aux-address` before the network
    /// exists (kept, allocated once it does), or an endpoint's address,
    /// allocated by the network's driver.
    fn docker_request_address(&mut self, r: RequestAddress) -> Result<Value, ApiError> {
        let mut pool = self
            .docker
            .pools
            .get(&r.pool)
            .cloned()
            .ok_or_else(|| unknown_pool(&r.pool))?;
        let subnet = pool.subnet;
        if let Some(a) = r.address {
            if !subnet.contains(&a) {
                return Err(ApiError::bad(format!(
                    "address {a} is not in the pool {subnet}"
                )));
            }
        }
        if r.gateway {
            let gw = match r.address {
                Some(a) => a,
                None => first_host(subnet).ok_or_else(|| {
                    ApiError::bad(format!("the pool {subnet} has no room for a gateway"))
                })?,
            };
            pool.gateway = Some(gw);
            self.docker_put(DockerRecord::Pool(pool))?;
            return Ok(json!({ "Address": with_prefix(gw, subnet), "Data": {} }));
        }
        let Some(network) = pool.network.clone() else {
            let Some(a) = r.address else {
                return Err(ApiError::bad(format!(
                    "the pool {subnet} has no network yet; its addresses are handed out once Docker's network is made"
                )));
            };
            if pool.pending.contains(&a) || pool.gateway == Some(a) {
                return Err(ApiError::conflict(format!("address {a} is taken")));
            }
            pool.pending.push(a);
            self.docker_put(DockerRecord::Pool(pool))?;
            return Ok(json!({ "Address": with_prefix(a, subnet), "Data": {} }));
        };
        self.docker_network_again(&network)?;
        let kind = self.network(&network)?.record.driver;
        let family = if subnet.addr().is_ipv6() {
            ipam::Family::V6
        } else {
            ipam::Family::V4
        };
        let a = drivers::of(kind).allocate(self, &network, Want::or_any(r.address, family))?;
        pool.held.push((a, None));
        if let Err(e) = self.docker_put(DockerRecord::Pool(pool)) {
            drivers::of(kind).release(self, &network, a);
            return Err(e);
        }
        Ok(json!({ "Address": with_prefix(a, subnet), "Data": {} }))
    }

    /// `ReleaseAddress`: idempotent.
    fn docker_release_address(&mut self, id: &str, a: IpAddr) -> Result<Value, ApiError> {
        let Some(mut pool) = self.docker.pools.get(id).cloned() else {
            return Err(unknown_pool(id));
        };
        if pool.gateway == Some(a) {
            pool.gateway = None;
        } else if let Some(i) = pool.pending.iter().position(|p| *p == a) {
            pool.pending.remove(i);
        } else if let Some(i) = pool.held.iter().position(|(p, _)| *p == a) {
            pool.held.remove(i);
            if let Some(network) = pool.network.clone() {
                self.docker_put(DockerRecord::Pool(pool))?;
                self.docker_give_back(&network, a);
                return Ok(json!({}));
            }
        } else {
            return Ok(json!({}));
        }
        self.docker_put(DockerRecord::Pool(pool))?;
        Ok(json!({}))
    }

    /// `CreateNetwork`: the vswitch network named by `vswitch.name` made,
    /// or found and checked.
    fn docker_create_network(&mut self, c: CreateNetwork) -> Result<Value, ApiError> {
        if self.docker.networks.contains_key(&c.network) {
            return Err(ApiError::conflict(format!(
                "Docker network {} exists already",
                short(&c.network)
            )));
        }
        let mut options = BTreeMap::new();
        let mut name = None;
        let mut driver = Driver::Bridge;
        let mut mtu = None;
        for (k, v) in &c.options {
            match k.as_str() {
                "vswitch.name" => name = Some(v.clone()),
                "vswitch.driver" => {
                    driver = match v.as_str() {
                        "bridge" => Driver::Bridge,
                        "overlay" => Driver::Overlay,
                        other => {
                            return Err(ApiError::bad(format!(
                                "-o vswitch.driver={other}: use bridge or overlay"
                            )))
                        }
                    }
                }
                "com.docker.network.driver.mtu" => {
                    mtu = Some(v.parse::<u32>().map_err(|_| {
                        ApiError::bad(format!(
                            "-o com.docker.network.driver.mtu={v} is not a number"
                        ))
                    })?)
                }
                "encrypted" | "transport" | "vni" => {
                    options.insert(k.clone(), v.clone());
                }
                other => {
                    return Err(ApiError::bad(format!(
                        "unknown option `-o {other}`; vswitch networks take {OPTIONS}"
                    )))
                }
            }
        }
        let name = name.unwrap_or_else(|| format!("docker-{}", short(&c.network)));
        api::validate_name("network", &name).map_err(ApiError::bad)?;
        if let Some(other) = self.docker.network_on(&name) {
            return Err(ApiError::conflict(format!(
                "vswitch network `{name}` is the Docker network {} already; one Docker network per vswitch network",
                short(&other.id)
            )));
        }
        let data: Vec<&protocol::IpamData> = c.ipv4_data.iter().chain(&c.ipv6_data).collect();
        let subnets: Vec<SubnetSpec> = data
            .iter()
            .map(|d| SubnetSpec {
                subnet: Some(d.pool),
                gateway: d.gateway,
                ip_range: self
                    .docker
                    .pools
                    .values()
                    .find(|p| p.subnet == d.pool)
                    .and_then(|p| p.ip_range),
            })
            .collect();
        let spec = api::NetworkCreate {
            name: name.clone(),
            driver,
            subnets,
            ipv6: c.ipv6,
            internal: c.internal,
            mtu,
            options,
            labels: [("com.docker.network.id".to_string(), c.network.clone())].into(),
        };
        let created = match self.networks.get(&name) {
            Some(n) => {
                // Found: Docker's view must be the network's.
                if n.record.driver != driver {
                    return Err(ApiError::conflict(format!(
                        "vswitch network `{name}` is a {} network, not {}; say -o vswitch.driver={}",
                        n.record.driver.as_str(),
                        driver.as_str(),
                        n.record.driver.as_str()
                    )));
                }
                for d in &data {
                    let mine = n.record.subnets.iter().find(|s| s.subnet == Some(d.pool));
                    let Some(mine) = mine else {
                        let theirs: Vec<String> = n
                            .record
                            .subnets
                            .iter()
                            .filter_map(|s| s.subnet.map(|s| s.to_string()))
                            .collect();
                        return Err(ApiError::conflict(format!(
                            "vswitch network `{name}` has the subnet {}, not {}; create the Docker network with --subnet {} (or --ipam-opt vswitch.name={name})",
                            theirs.join(" and "),
                            d.pool,
                            theirs.first().cloned().unwrap_or_default()
                        )));
                    };
                    if d.gateway.is_some() && mine.gateway != d.gateway {
                        return Err(ApiError::conflict(format!(
                            "vswitch network `{name}` has the gateway {}, not {}",
                            mine.gateway.map(|g| g.to_string()).unwrap_or_default(),
                            d.gateway.map(|g| g.to_string()).unwrap_or_default()
                        )));
                    }
                }
                false
            }
            None => {
                self.create_network(spec.clone())?;
                true
            }
        };
        let record = DockerNetwork {
            id: c.network.clone(),
            name: name.clone(),
            spec,
        };
        let bound = self.docker_bind_pools(&name, &data);
        if let Err(e) = bound.and_then(|()| self.docker_put(DockerRecord::Network(record))) {
            self.docker_unbind_pools(&name);
            if created {
                let _ = self.remove_network(&name);
            }
            return Err(e);
        }
        tracing::info!(docker = short(&c.network), network = %name, created, "Docker network on vswitch");
        Ok(json!({}))
    }

    /// The pools of Docker's network now hand out addresses of `network`;
    /// `--aux-address`es asked for meanwhile are allocated.
    fn docker_bind_pools(
        &mut self,
        network: &str,
        data: &[&protocol::IpamData],
    ) -> Result<(), ApiError> {
        let kind = self.network(network)?.record.driver;
        let ids: Vec<String> = self
            .docker
            .pools
            .values()
            .filter(|p| p.network.is_none() && data.iter().any(|d| d.pool == p.subnet))
            .map(|p| p.id.clone())
            .collect();
        for id in ids {
            let mut pool = self.docker.pools[&id].clone();
            pool.network = Some(network.to_string());
            for a in std::mem::take(&mut pool.pending) {
                if Some(a) == self.network(network)?.gateway4().map(IpAddr::V4)
                    || Some(a) == self.network(network)?.gateway6().map(IpAddr::V6)
                {
                    continue;
                }
                let a = drivers::of(kind).allocate(self, network, Want::Static(a))?;
                pool.held.push((a, None));
            }
            self.docker_put(DockerRecord::Pool(pool))?;
        }
        Ok(())
    }

    fn docker_unbind_pools(&mut self, network: &str) {
        let ids: Vec<String> = self
            .docker
            .pools
            .values()
            .filter(|p| p.network.as_deref() == Some(network))
            .map(|p| p.id.clone())
            .collect();
        for id in ids {
            let mut pool = self.docker.pools[&id].clone();
            for (a, _) in std::mem::take(&mut pool.held) {
                pool.pending.push(a);
                self.docker_give_back(network, a);
            }
            pool.network = None;
            if let Err(e) = self.docker_put(DockerRecord::Pool(pool)) {
                tracing::warn!(error = %e, "unbinding a Docker pool");
            }
        }
    }

    /// `DeleteNetwork`: the vswitch network goes if a Docker network made
    /// it (here or on another host) and no other host has endpoints on it;
    /// otherwise it stays for them, and only this host's Docker network
    /// goes.
    fn docker_delete_network(&mut self, id: &str) -> Result<Value, ApiError> {
        let Some(n) = self.docker.networks.get(id).cloned() else {
            return Ok(json!({}));
        };
        if self.docker.endpoints.values().any(|e| e.network == id) {
            return Err(ApiError::conflict(format!(
                "Docker network {} still has endpoints",
                short(id)
            )));
        }
        // The addresses Docker still holds go either way.
        self.docker_unbind_pools(&n.name);
        let last = self.networks.get(&n.name).is_some_and(|v| {
            v.record.labels.contains_key("com.docker.network.id") && v.remotes.is_empty()
        });
        if last {
            self.remove_network(&n.name)?;
        } else if self.networks.contains_key(&n.name) {
            tracing::info!(network = %n.name, "vswitch network left for its other users");
        }
        self.docker_delete(&DockerRecord::Network(n.clone()))?;
        tracing::info!(docker = short(id), network = %n.name, removed = last, "Docker network removed");
        Ok(json!({}))
    }

    /// The vswitch network of a Docker network, made again from the
    /// Docker network's request if it went meanwhile (the last other host
    /// removed the overlay, or `vswitch network rm`), with the addresses
    /// Docker still holds in it.
    fn docker_network_again(&mut self, name: &str) -> Result<(), ApiError> {
        if self.networks.contains_key(name) {
            return Ok(());
        }
        let Some(spec) = self.docker.network_on(name).map(|n| n.spec.clone()) else {
            return Err(ApiError::not_found(format!("no vswitch network `{name}`")));
        };
        tracing::info!(network = %name, "making the vswitch network of a Docker network again");
        self.create_network(spec)?;
        let held: Vec<IpAddr> = self
            .docker
            .pools
            .values()
            .filter(|p| p.network.as_deref() == Some(name))
            .flat_map(|p| p.held.iter().map(|(a, _)| *a))
            .collect();
        for a in held {
            self.restore_held_address(name, a);
        }
        Ok(())
    }

    /// `CreateEndpoint`: Docker's addresses checked against the network,
    /// a MAC chosen if Docker has none.
    fn docker_create_endpoint(&mut self, e: CreateEndpoint) -> Result<Value, ApiError> {
        let dn = self
            .docker
            .networks
            .get(&e.network)
            .ok_or_else(|| unknown_network(&e.network))?
            .clone();
        if self.docker.endpoints.contains_key(&e.endpoint) {
            return Err(ApiError::conflict(format!(
                "Docker endpoint {} exists already",
                short(&e.endpoint)
            )));
        }
        self.docker_network_again(&dn.name)?;
        let n = self.network(&dn.name)?;
        let check = |a: Option<IpNet>, subnet: Option<IpNet>, what: &str| -> Result<(), ApiError> {
            match (a, subnet) {
                (Some(a), Some(s)) if !s.contains(&a.addr()) => Err(ApiError::bad(format!(
                    "{what} address {a} is not in the network's subnet {s}"
                ))),
                (Some(a), None) => Err(ApiError::bad(format!(
                    "network `{}` has no {what} subnet for {a}",
                    dn.name
                ))),
                (None, Some(s)) => Err(ApiError::bad(format!(
                    "Docker gave the endpoint no {what} address in {s}; use --ipam-driver vswitch"
                ))),
                _ => Ok(()),
            }
        };
        check(e.ipv4, n.subnet4().map(IpNet::V4), "IPv4")?;
        check(e.ipv6, n.subnet6().map(IpNet::V6), "IPv6")?;
        let mac = match (e.mac, e.ipv4) {
            (Some(m), _) => MacAddr(m),
            (None, Some(IpNet::V4(a))) => {
                let o = a.addr().octets();
                MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
            }
            (None, _) => MacAddr::local_from_seed(e.endpoint.as_bytes()),
        };
        if mac.is_multicast() || mac.is_zero() {
            return Err(ApiError::bad(format!(
                "--mac-address {mac} is not a unicast address"
            )));
        }
        let ep = DockerEndpoint {
            id: e.endpoint.clone(),
            network: e.network.clone(),
            ipv4: e.ipv4,
            ipv6: e.ipv6,
            mac: mac.0,
            ifname: format!("vsd{}", short(&e.endpoint)),
            container: None,
        };
        // The addresses Docker's IPAM handed out are this endpoint's.
        let addrs: Vec<IpAddr> = e.ipv4.iter().chain(&e.ipv6).map(|a| a.addr()).collect();
        let owned: Vec<DockerPool> = self
            .docker
            .pools
            .values()
            .filter(|p| p.network.as_deref() == Some(dn.name.as_str()))
            .filter(|p| p.held.iter().any(|(a, _)| addrs.contains(a)))
            .cloned()
            .collect();
        for mut p in owned {
            for (a, o) in p.held.iter_mut() {
                if addrs.contains(a) {
                    *o = Some(e.endpoint.clone());
                }
            }
            self.docker_put(DockerRecord::Pool(p))?;
        }
        self.docker_put(DockerRecord::Endpoint(ep))?;
        Ok(if e.mac.is_none() {
            json!({ "Interface": { "MacAddress": mac.to_string() } })
        } else {
            json!({ "Interface": null })
        })
    }

    /// `EndpointOperInfo`: what `docker port` and `docker inspect` show of
    /// the published ports.
    fn docker_endpoint_info(&self, e: &EndpointRef) -> Result<Value, ApiError> {
        let ep = self
            .docker
            .endpoints
            .get(&e.endpoint)
            .ok_or_else(|| unknown_endpoint(&e.endpoint))?;
        let ports = self.docker_ports_of(ep);
        let ip = ep.ipv4.map(|a| a.addr().to_string()).unwrap_or_default();
        let map: Vec<Value> = ports
            .iter()
            .map(|p| {
                json!({
                    "Proto": match p.proto { api::PortProto::Tcp => 6, api::PortProto::Udp => 17 },
                    "IP": ip,
                    "Port": p.container_port,
                    "HostIP": p.host_ip.map(|h| h.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
                    "HostPort": p.host_port,
                    "HostPortEnd": p.host_port,
                })
            })
            .collect();
        Ok(json!({ "Value": { protocol::PORTMAP: map } }))
    }

    fn docker_ports_of(&self, ep: &DockerEndpoint) -> Vec<api::PortMapping> {
        let Some(container) = &ep.container else {
            return Vec::new();
        };
        self.docker
            .networks
            .get(&ep.network)
            .and_then(|n| self.networks.get(&n.name))
            .and_then(|n| n.endpoints.get(container))
            .map(|e| e.ports.clone())
            .unwrap_or_default()
    }

    /// The joined endpoint's vswitch network and container.
    fn docker_joined(&self, e: &EndpointRef) -> Result<(String, String), ApiError> {
        let ep = self
            .docker
            .endpoints
            .get(&e.endpoint)
            .ok_or_else(|| unknown_endpoint(&e.endpoint))?;
        let container = ep.container.clone().ok_or_else(|| {
            ApiError::bad(format!(
                "Docker endpoint {} has not joined a sandbox",
                short(&e.endpoint)
            ))
        })?;
        let network = self
            .docker
            .networks
            .get(&ep.network)
            .ok_or_else(|| unknown_network(&ep.network))?
            .name
            .clone();
        Ok((network, container))
    }

    /// `ProgramExternalConnectivity`: `docker run -p` forwarded by vswitch.
    fn docker_publish(&mut self, x: External) -> Result<Value, ApiError> {
        let (network, container) = self.docker_joined(&EndpointRef {
            network: x.network.clone(),
            endpoint: x.endpoint.clone(),
        })?;
        self.replace_published(&network, &container, &x.ports)?;
        Ok(json!({}))
    }

    /// `RevokeExternalConnectivity`: the published ports withdrawn.
    fn docker_revoke(&mut self, e: &EndpointRef) -> Result<Value, ApiError> {
        let Ok((network, container)) = self.docker_joined(e) else {
            return Ok(json!({}));
        };
        self.unpublish_all(&network, &container)?;
        Ok(json!({}))
    }

    /// After a restart, before the endpoints: the Docker records loaded.
    pub(super) fn load_docker(&mut self) -> anyhow::Result<()> {
        for r in self.store.load_docker()? {
            self.docker.insert(r);
        }
        Ok(())
    }

    /// After a restart, once the endpoints are back: the addresses Docker
    /// holds marked allocated again, and what belonged to sandboxes that
    /// went while vswitchd was down (a container stopped or removed
    /// meanwhile) released.
    pub(super) fn settle_docker(&mut self) {
        let held: Vec<(String, IpAddr)> = self
            .docker
            .pools
            .values()
            .filter_map(|p| Some((p.network.clone()?, p)))
            .flat_map(|(n, p)| p.held.iter().map(move |(a, _)| (n.clone(), *a)))
            .collect();
        for (network, a) in held {
            if !self.networks.get(&network).is_some_and(|n| n.uses(a)) {
                self.restore_held_address(&network, a);
            }
        }
        let gone: Vec<DockerEndpoint> = self
            .docker
            .endpoints
            .values()
            .filter(|e| {
                let Some(container) = &e.container else {
                    return false;
                };
                let network = self
                    .docker
                    .networks
                    .get(&e.network)
                    .map(|n| n.name.as_str());
                !network
                    .and_then(|n| self.networks.get(n))
                    .is_some_and(|n| n.endpoints.contains_key(container))
            })
            .cloned()
            .collect();
        for e in gone {
            tracing::warn!(
                endpoint = short(&e.id),
                "the sandbox of a Docker endpoint went while vswitchd was down; releasing it"
            );
            // Docker moved the TAP back out before the Leave it could not
            // send, if the sandbox still existed then.
            let _ = netns::remove_tap(Path::new("/proc/self/ns/net"), &e.ifname);
            let owned = self.docker.pools_of(&e.id);
            for mut p in owned {
                let mine: Vec<IpAddr> = p
                    .held
                    .iter()
                    .filter(|(_, o)| o.as_deref() == Some(e.id.as_str()))
                    .map(|(a, _)| *a)
                    .collect();
                p.held.retain(|(_, o)| o.as_deref() != Some(e.id.as_str()));
                let network = p.network.clone();
                if let Err(err) = self.docker_put(DockerRecord::Pool(p)) {
                    tracing::warn!(error = %err, "releasing the addresses of a gone Docker endpoint");
                    continue;
                }
                if let Some(network) = network {
                    for a in mine {
                        self.docker_give_back(&network, a);
                    }
                }
            }
            if let Err(err) = self.docker_delete(&DockerRecord::Endpoint(e)) {
                tracing::warn!(error = %err, "deleting the record of a gone Docker endpoint");
            }
        }
    }

    /// Marks an address Docker holds as allocated again, in this host's
    /// IPAM and, on overlays, the cluster allocator.
    fn restore_held_address(&mut self, network: &str, a: IpAddr) {
        if let Err(e) = self.ipam.restore_address(network, a) {
            tracing::warn!(%a, network, error = %e, "restoring an address Docker holds");
        }
        if let Some(alloc) = self
            .networks
            .get_mut(network)
            .and_then(|n| n.alloc.as_mut())
        {
            if let Err(e) = alloc.restore_address(a) {
                tracing::warn!(%a, error = %e, "overlay address no longer owned here");
            }
        }
    }
}

/// The first host address of a subnet, the conventional gateway.
fn first_host(subnet: IpNet) -> Option<IpAddr> {
    match subnet {
        IpNet::V4(n) if n.prefix_len() < 31 => Some(IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()) + 1,
        ))),
        IpNet::V6(n) if n.prefix_len() < 127 => Some(IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()) + 1,
        ))),
        _ => None,
    }
}
