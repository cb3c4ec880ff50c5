//! Containers (sandboxes): records, `vswitch rm`, `vswitch inspect`.

use super::*;

impl ControlPlane {
    /// `vswitch rm`: stops the container's process (without the lock: it
    /// may take seconds), disconnects it from every network, deletes its
    /// namespace if vswitch made it. Every step is tried; the failures are
    /// reported together.
    pub(super) fn remove_container(&self, name: &str) -> Result<(), ApiError> {
        let (pid, nets) = {
            let c = self.lock()?;
            let rec = c.containers.get(name).ok_or_else(|| no_container(name))?;
            if let Some(network) = c.connecting.get(name) {
                return Err(ApiError::conflict(format!(
                    "container `{name}` is being connected to network `{network}`; try again when that is done"
                )));
            }
            let nets: Vec<String> = c
                .networks
                .iter()
                .filter(|(_, n)| n.endpoints.contains_key(name))
                .map(|(k, _)| k.clone())
                .collect();
            (rec.pid, nets)
        };
        if let Some(pid) = pid {
            stop_process(pid);
        }
        let mut errors = Vec::new();
        for n in nets {
            if let Err(e) = self.disconnect(&n, name) {
                errors.push(format!("disconnecting from `{n}`: {e}"));
            }
        }
        let record = {
            let mut c = self.lock()?;
            if let Err(e) = c.store.delete_container(name) {
                errors.push(e.to_string());
            }
            c.containers.remove(name)
        };
        if let Some(p) = record.filter(|r| r.owns_netns).and_then(|r| r.netns) {
            let ns_name = p.file_name().and_then(|s| s.to_str()).unwrap_or(name);
            if let Err(e) = sandbox::delete_netns(ns_name) {
                errors.push(format!("deleting namespace {}: {e}", p.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::internal(format!(
                "container `{name}` removed with errors: {}",
                errors.join("; ")
            )))
        }
    }
}

impl Controller {
    pub(super) fn create_container(&mut self, c: api::ContainerCreate) -> Result<(), ApiError> {
        if self.containers.contains_key(&c.name) {
            return Err(ApiError::conflict(format!(
                "container `{}` already exists; remove it with `vswitch rm {}` or pick another --name",
                c.name, c.name
            )));
        }
        if let Some(p) = &c.netns {
            check_netns(p)?;
        }
        self.create_container_record(c)
    }

    /// A container record, for a namespace that may not exist yet (a
    /// Docker sandbox's is made after its endpoints join).
    pub(super) fn create_container_record(
        &mut self,
        c: api::ContainerCreate,
    ) -> Result<(), ApiError> {
        if self.containers.contains_key(&c.name) {
            return Err(ApiError::conflict(format!(
                "container `{}` already exists",
                c.name
            )));
        }
        let rec = ContainerRecord {
            name: c.name.clone(),
            id: random_id(),
            netns: c.netns,
            owns_netns: c.owns_netns,
            pid: c.pid,
        };
        self.store.put_container(&rec).map_err(internal)?;
        self.containers.insert(rec.name.clone(), rec);
        Ok(())
    }

    /// `vswitch run -d` tells the pid of the process it started.
    pub(super) fn set_container_pid(
        &mut self,
        name: &str,
        pid: Option<u32>,
    ) -> Result<(), ApiError> {
        let c = self
            .containers
            .get_mut(name)
            .ok_or_else(|| no_container(name))?;
        c.pid = pid;
        let c = c.clone();
        self.store.put_container(&c).map_err(internal)
    }

    pub(super) fn container_inspect(&self, name: &str) -> Result<api::ContainerInspect, ApiError> {
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| no_container(name))?;
        let networks = self
            .networks
            .values()
            .filter_map(|n| {
                let e = n.endpoints.get(name)?;
                Some((
                    n.record.name.clone(),
                    api::EndpointInspect {
                        network: n.record.name.clone(),
                        endpoint_id: e.record.id.clone(),
                        interface: e.record.ifname.clone(),
                        mac: MacAddr(e.record.mac).to_string(),
                        ipv4: e.record.ipv4.map(|a| a.addr()),
                        ipv4_prefix: e.record.ipv4.map(|a| a.prefix_len()),
                        ipv6: e.record.ipv6.map(|a| a.addr()),
                        ipv6_prefix: e.record.ipv6.map(|a| a.prefix_len()),
                        gateway: n.gateway4(),
                        gateway6: n.gateway6(),
                        aliases: e.record.aliases.clone(),
                    },
                ))
            })
            .collect();
        Ok(api::ContainerInspect {
            name: c.name.clone(),
            id: c.id.clone(),
            netns: c.netns.clone(),
            pid: c.pid,
            host: self.config.node_name.clone(),
            networks,
            ports: self.port_bindings(name),
        })
    }
}

/// SIGTERM, then SIGKILL after a grace period, as `docker stop` does.
pub(super) fn stop_process(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if !is_running(pid) {
            return;
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// True while `pid` exists and is not a zombie waiting for its parent (a
/// zombie still answers `kill(pid, 0)`).
pub(super) fn is_running(pid: nix::unistd::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl Controller {
    /// Renames a container and moves its endpoints along (records, DNS,
    /// published ports, the cluster directory): a Docker sandbox is
    /// connected before Docker's container name is known. Refused when
    /// the name is another container's.
    pub(super) fn rename_container(&mut self, old: &str, new: &str) -> Result<(), ApiError> {
        if old == new {
            return Ok(());
        }
        api::validate_name("container", new).map_err(ApiError::bad)?;
        if self.containers.contains_key(new) {
            return Err(ApiError::conflict(format!(
                "container `{new}` exists already; `{old}` keeps its name"
            )));
        }
        if self.connecting.contains_key(old) {
            return Err(ApiError::conflict(format!(
                "container `{old}` is being connected; try again when that is done"
            )));
        }
        let mut rec = self
            .containers
            .get(old)
            .cloned()
            .ok_or_else(|| no_container(old))?;
        rec.name = new.to_string();
        self.store.put_container(&rec).map_err(internal)?;
        self.containers.insert(new.to_string(), rec);
        let nets: Vec<String> = self
            .networks
            .iter()
            .filter(|(_, n)| n.endpoints.contains_key(old))
            .map(|(k, _)| k.clone())
            .collect();
        for network in nets {
            let net = self.networks.get_mut(&network).expect("listed");
            let mut ep = net.endpoints.remove(old).expect("listed");
            ep.record.container = new.to_string();
            let (record, ports) = (ep.record.clone(), ep.ports.clone());
            net.endpoints.insert(new.to_string(), ep);
            net.publish_zone();
            let kind = net.record.driver;
            let stored = self
                .store
                .put_endpoint(&record)
                .and_then(|()| self.store.put_ports(new, &network, &ports))
                .and_then(|()| self.store.delete_endpoint(old, &network));
            if let Err(e) = stored {
                tracing::error!(container = old, network, error = %e, "storing a renamed endpoint");
            }
            // Published again under the new name (same key).
            drivers::of(kind).endpoint_connected(self, &network, new);
        }
        if let Err(e) = self.store.delete_container(old) {
            tracing::error!(container = old, error = %e, "deleting the old container record");
        }
        self.containers.remove(old);
        self.docker_container_renamed(old, new);
        tracing::info!(old, new, "container renamed");
        Ok(())
    }

    /// Sets the DNS aliases of a container's endpoint on a network.
    pub(super) fn set_aliases(
        &mut self,
        network: &str,
        container: &str,
        aliases: Vec<String>,
    ) -> Result<(), ApiError> {
        let net = self
            .networks
            .get_mut(network)
            .ok_or_else(|| ApiError::not_found(format!("network `{network}` not found")))?;
        let ep = net
            .endpoints
            .get_mut(container)
            .ok_or_else(|| no_container(container))?;
        if ep.record.aliases == aliases {
            return Ok(());
        }
        ep.record.aliases = aliases;
        let record = ep.record.clone();
        net.publish_zone();
        let kind = net.record.driver;
        self.store.put_endpoint(&record).map_err(internal)?;
        drivers::of(kind).endpoint_connected(self, network, container);
        Ok(())
    }
}
