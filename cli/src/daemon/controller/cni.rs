//! CNI attachments: what `vswitch-cni` asks for (`/v1/cni/*`) made into
//! the controller's own connect and disconnect.
//!
//! An attachment is keyed as the CNI spec keys it, by (container id,
//! interface name), and is one vswitch endpoint: the runtime's namespace is
//! the container's, the interface is a TAP named as the runtime asked
//! (`Placement::Configure` with its name) and configured by vswitch (addresses, default
//! routes, MTU), so the plugin's result describes what is already there.
//! Attachments of one container id share one vswitch container, named after
//! the runtime's name for it (`K8S_POD_NAME`), so DNS answers by that name;
//! the container goes with its last attachment. The `cni` table keeps the
//! keys across restarts.

use super::endpoints::Placement;
use super::*;
use crate::daemon::state::CniRecord;

/// The table of attachments by (container id, interface).
pub(super) type CniTable = BTreeMap<(String, String), CniRecord>;

fn table_key(k: &api::CniKey) -> (String, String) {
    (k.container_id.clone(), k.ifname.clone())
}

impl ControlPlane {
    /// `ADD`: the namespace attached to the network as `ifname`. The same
    /// ADD again answers what it made; another network on a taken key is
    /// refused.
    pub(super) fn cni_add(&self, a: api::CniAdd) -> Result<api::CniAttachment, ApiError> {
        let key = table_key(&a.key);
        let container = {
            let mut c = self.lock()?;
            if let Some(r) = c.cni.get(&key).cloned() {
                if r.key.network != a.key.network {
                    return Err(ApiError::conflict(format!(
                        "container {} has {} on network `{}` already; DEL it first",
                        a.key.container_id, a.key.ifname, r.key.network
                    )));
                }
                match c.cni_attachment(&r) {
                    Ok(made) => return Ok(made),
                    // Its endpoint was disconnected by hand: made again.
                    Err(_) => {
                        c.store.delete_cni(&r).map_err(internal)?;
                        c.cni.remove(&key);
                    }
                }
            }
            c.network(&a.key.network)?;
            c.cni_container_name(&a)?
        };
        let req = api::Connect {
            container: container.clone(),
            netns: Some(a.netns.clone()),
            ip: a.ip,
            ip6: a.ip6,
            mac: a.mac.clone(),
            aliases: a.aliases.clone(),
            ports: a.ports.clone(),
            labels: Default::default(),
        };
        self.connect_placed(
            &a.key.network,
            req,
            Placement::Configure {
                ifname: Some(a.key.ifname.clone()),
            },
        )?;
        let rec = CniRecord {
            key: a.key,
            container,
        };
        let made = {
            let mut c = self.lock()?;
            c.store.put_cni(&rec).map_err(internal).and_then(|()| {
                c.cni.insert(key, rec.clone());
                c.cni_attachment(&rec)
            })
        };
        match &made {
            Ok(_) => tracing::info!(id = %rec.key.container_id, ifname = %rec.key.ifname,
                network = %rec.key.network, container = %rec.container, "CNI attachment added"),
            // Whatever part of it was made goes again.
            Err(_) => {
                let _ = self.cni_del(&rec.key);
                let _ = self.disconnect(&rec.key.network, &rec.container);
            }
        }
        made
    }

    /// `DEL`: idempotent; an attachment, endpoint or namespace already gone
    /// is not an error.
    pub(super) fn cni_del(&self, k: &api::CniKey) -> Result<(), ApiError> {
        let key = table_key(k);
        let rec = match self.lock()?.cni.get(&key) {
            Some(r) if r.key.network == k.network => r.clone(),
            _ => return Ok(()),
        };
        match self.disconnect(&rec.key.network, &rec.container) {
            Ok(()) => {}
            Err(e) if e.status == 404 => {}
            Err(e) => return Err(e),
        }
        let mut c = self.lock()?;
        c.store.delete_cni(&rec).map_err(internal)?;
        c.cni.remove(&key);
        tracing::info!(id = %k.container_id, ifname = %k.ifname, network = %k.network,
            "CNI attachment deleted");
        Ok(())
    }

    /// `CHECK`: the attachment as vswitch made it, and its interface as
    /// the kernel has it now, for the plugin to compare with `prevResult`.
    pub(super) fn cni_check(&self, k: &api::CniKey) -> Result<api::CniCheck, ApiError> {
        let attachment = {
            let c = self.lock()?;
            let rec = c
                .cni
                .get(&table_key(k))
                .filter(|r| r.key.network == k.network)
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "container {} has no attachment {} on network `{}`",
                        k.container_id, k.ifname, k.network
                    ))
                })?;
            c.cni_attachment(rec)?
        };
        let live = netns::iface_state(&attachment.netns, &k.ifname)
            .map_err(|e| ApiError::bad(e.to_string()))?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} has no interface {} any more",
                    attachment.netns.display(),
                    k.ifname
                ))
            })?;
        Ok(api::CniCheck {
            attachment,
            live: api::LiveInterface {
                mac: live.mac.map(|m| m.to_string()).unwrap_or_default(),
                mtu: live.mtu,
                up: live.up,
                addrs: live.addrs,
                routes: live.routes,
            },
        })
    }

    /// `GC`: every attachment of the network that the runtime does not
    /// list as valid is deleted; returns their keys.
    pub(super) fn cni_gc(&self, g: &api::CniGc) -> Result<Vec<api::CniKey>, ApiError> {
        let stale: Vec<api::CniKey> =
            self.lock()?
                .cni
                .values()
                .filter(|r| {
                    r.key.network == g.network
                        && !g.valid.iter().any(|(id, ifname)| {
                            *id == r.key.container_id && *ifname == r.key.ifname
                        })
                })
                .map(|r| r.key.clone())
                .collect();
        let mut errors = Vec::new();
        for k in &stale {
            if let Err(e) = self.cni_del(k) {
                errors.push(format!("{}/{}: {}", k.container_id, k.ifname, e.message));
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::internal(format!(
                "garbage collection of network `{}` left attachments: {}",
                g.network,
                errors.join("; ")
            )));
        }
        Ok(stale)
    }
}

impl Controller {
    /// The vswitch container of a new attachment: the one of the container
    /// id's other attachments, else the runtime's name if free, else that
    /// name with the id's first 8 characters.
    fn cni_container_name(&self, a: &api::CniAdd) -> Result<String, ApiError> {
        if let Some(r) = self
            .cni
            .values()
            .find(|r| r.key.container_id == a.key.container_id)
        {
            return Ok(r.container.clone());
        }
        let id = &a.key.container_id;
        let short: String = id.chars().take(12).collect();
        let base = a
            .name
            .clone()
            .filter(|n| n.len() <= 54)
            .unwrap_or_else(|| short.clone());
        let candidates = [
            base.clone(),
            format!("{base}-{}", id.chars().take(8).collect::<String>()),
        ];
        candidates
            .into_iter()
            .find(|n| api::validate_name("container", n).is_ok() && !self.containers.contains_key(n))
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "the container names `{base}` and `{base}-{}` are taken; remove the old containers or give another name",
                    id.chars().take(8).collect::<String>()
                ))
            })
    }

    /// What an attachment is, from its endpoint.
    fn cni_attachment(&self, r: &CniRecord) -> Result<api::CniAttachment, ApiError> {
        let net = self.network(&r.key.network)?;
        let ep = net.endpoints.get(&r.container).ok_or_else(|| {
            ApiError::not_found(format!(
                "container `{}` is not connected to network `{}` any more",
                r.container, r.key.network
            ))
        })?;
        let netns = self
            .containers
            .get(&r.container)
            .and_then(|c| c.netns.clone())
            .unwrap_or_default();
        let (gw4, gw6) = (net.gateway4(), net.gateway6());
        Ok(api::CniAttachment {
            key: r.key.clone(),
            container: r.container.clone(),
            netns,
            mac: MacAddr(ep.record.mac).to_string(),
            mtu: net.record.mtu,
            ipv4: ep.record.ipv4,
            ipv6: ep.record.ipv6,
            gateway4: gw4,
            gateway6: gw6,
            default_route: ep.record.gateway4.is_some() || ep.record.gateway6.is_some(),
            nameservers: gw4
                .map(IpAddr::V4)
                .into_iter()
                .chain(gw6.map(IpAddr::V6))
                .collect(),
            ports: ep.ports.clone(),
        })
    }

    /// At start: the stored attachments; those whose endpoint did not come
    /// back (its namespace went while vswitchd was down) are dropped.
    pub(super) fn load_cni(&mut self) -> anyhow::Result<()> {
        for r in self.store.load_cni()? {
            let alive = self
                .networks
                .get(&r.key.network)
                .is_some_and(|n| n.endpoints.contains_key(&r.container));
            if alive {
                self.cni.insert(table_key(&r.key), r);
            } else {
                tracing::warn!(id = %r.key.container_id, ifname = %r.key.ifname, network = %r.key.network,
                    "the endpoint of a CNI attachment went while vswitchd was down; dropping it");
                if let Err(e) = self.store.delete_cni(&r) {
                    tracing::warn!(error = %e, "deleting a CNI attachment");
                }
            }
        }
        Ok(())
    }
}
