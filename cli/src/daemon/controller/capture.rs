//! `vswitch capture`: which TAP ports a capture watches, and starting and
//! ending it on the datapath (the server streams what it sees).

use std::sync::Arc;

use switch::capture::Filter;
use tokio::sync::mpsc;

use super::*;
use crate::daemon::datapath::{CaptureTap, Captured};

/// A capture the datapath is running; [`Controller::stop_capture`] ends it.
pub(crate) struct CaptureSession {
    pub(crate) id: u64,
    pub(crate) tap: Arc<CaptureTap>,
    pub(crate) rx: mpsc::Receiver<Captured>,
    /// Each port watched, with its name (`CONTAINER/IFACE`).
    pub(crate) interfaces: Vec<(PortId, String)>,
}

impl Controller {
    /// The TAP ports `req` names: a container's (one interface of it with
    /// `Interface`), or, failing a container of that name, every local
    /// endpoint of the network of that name.
    pub(crate) fn capture_ports(
        &self,
        req: &api::CaptureRequest,
    ) -> Result<Vec<(PortId, String)>, ApiError> {
        let name = |e: &Endpoint| format!("{}/{}", e.record.container, e.record.ifname);
        let of_container: Vec<&Endpoint> = self
            .networks
            .values()
            .flat_map(|n| n.endpoints.values())
            .filter(|e| e.record.container == req.target)
            .collect();
        let chosen: Vec<&Endpoint> = if !of_container.is_empty() {
            match &req.interface {
                Some(i) => {
                    let one: Vec<&Endpoint> = of_container
                        .iter()
                        .copied()
                        .filter(|e| &e.record.ifname == i)
                        .collect();
                    if one.is_empty() {
                        let have: Vec<&str> = of_container
                            .iter()
                            .map(|e| e.record.ifname.as_str())
                            .collect();
                        return Err(ApiError::not_found(format!(
                            "container `{}` has no interface `{i}` (it has {})",
                            req.target,
                            have.join(", ")
                        )));
                    }
                    one
                }
                None => of_container,
            }
        } else if let Some(n) = self.networks.get(&req.target) {
            if req.interface.is_some() {
                return Err(ApiError::bad(format!(
                    "`{}` is a network: -i names an interface of a container",
                    req.target
                )));
            }
            let all: Vec<&Endpoint> = n.endpoints.values().collect();
            if all.is_empty() {
                return Err(ApiError::bad(format!(
                    "network `{}` has no endpoint on this host to capture",
                    req.target
                )));
            }
            all
        } else if self.containers.contains_key(&req.target) {
            return Err(ApiError::bad(format!(
                "container `{}` is not connected to any network (has it exited?)",
                req.target
            )));
        } else {
            return Err(ApiError::not_found(format!(
                "no container or network `{}`",
                req.target
            )));
        };
        Ok(chosen.into_iter().map(|e| (e.port, name(e))).collect())
    }

    /// Starts a capture of what `req` names on every worker.
    pub(crate) fn start_capture(
        &mut self,
        req: &api::CaptureRequest,
    ) -> Result<CaptureSession, ApiError> {
        let interfaces = self.capture_ports(req)?;
        let busy: Vec<&str> = interfaces
            .iter()
            .filter(|(p, _)| self.captures.values().any(|c| c.contains(p)))
            .map(|(_, n)| n.as_str())
            .collect();
        if !busy.is_empty() {
            return Err(ApiError::new(
                409,
                format!(
                    "a capture of {} is already running; one capture per interface at a time",
                    busy.join(", ")
                ),
            ));
        }
        let filter =
            Filter::parse(&req.filter).map_err(|e| ApiError::bad(format!("filter: {e}")))?;
        let (tap, rx) = CaptureTap::new(filter, req.snaplen as usize);
        let tap = Arc::new(tap);
        let ports: Vec<PortId> = interfaces.iter().map(|(p, _)| *p).collect();
        self.datapath
            .set_capture(&ports, Some(tap.clone()))
            .map_err(ApiError::from)?;
        let id = self.next_capture;
        self.next_capture += 1;
        self.captures.insert(id, ports);
        tracing::info!(target = %req.target, filter = %req.filter, "capture started");
        Ok(CaptureSession {
            id,
            tap,
            rx,
            interfaces,
        })
    }

    /// Ends capture `id` (its reader has gone): the workers drop it.
    pub(crate) fn stop_capture(&mut self, id: u64) {
        if let Some(ports) = self.captures.remove(&id) {
            if let Err(e) = self.datapath.set_capture(&ports, None) {
                tracing::warn!(error = %e, "ending a capture");
            }
            tracing::info!(interfaces = ports.len(), "capture ended");
        }
    }

    /// Captures running.
    pub(crate) fn captures_running(&self) -> usize {
        self.captures.len()
    }
}
