//! [`ControlPlane`]: the controller as the API server and the gossip thread
//! share it.
//!
//! One mutex guards the controller's tables, and it is held only for steps
//! that do not wait: a request that works in a container's namespace
//! (`network connect`, `disconnect`, `vswitch rm`) takes it for its
//! bookkeeping, lets go while netlink or a stopping process is waited on,
//! and takes it again to finish, so gossip events and other requests are
//! applied meanwhile. The datapath answers within microseconds; its wait
//! is bounded (see `datapath::handle`).
//!
//! A panic in a request is a bug that may have left the tables half
//! changed: what the request had set up is undone where it kept an undo
//! list, the request is answered with a 500, and the daemon stops (see
//! [`ControlPlane::failed`]) so that a restart restores its state from the
//! store instead of going on with the tables as the panic left them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde_json::Value;

use super::{to_value, ApiError, Controller};
use crate::api::Request;

/// The shared controller.
#[derive(Debug)]
pub struct ControlPlane {
    inner: Mutex<Controller>,
    /// Why the daemon must stop, once a request has panicked.
    failure: Mutex<Option<String>>,
    stop: tokio::sync::Notify,
    /// Itself, for the tasks that watch containers' processes and call
    /// back when one ends.
    pub(super) me: Weak<ControlPlane>,
    /// `vswitch events`: read without the controller's lock.
    events: crate::daemon::events::EventLog,
}

impl ControlPlane {
    pub fn new(controller: Controller) -> Arc<ControlPlane> {
        let events = controller.event_log();
        Arc::new_cyclic(|me| ControlPlane {
            events,
            inner: Mutex::new(controller),
            failure: Mutex::new(None),
            stop: tokio::sync::Notify::new(),
            me: me.clone(),
        })
    }

    /// The event log (`vswitch events`), which the controller's steps
    /// write to.
    pub fn events(&self) -> &crate::daemon::events::EventLog {
        &self.events
    }

    /// The controller, for a step that does not wait. Refused once a
    /// request has panicked.
    pub fn lock(&self) -> Result<MutexGuard<'_, Controller>, ApiError> {
        if let Some(why) = self.failure() {
            return Err(stopping(&why));
        }
        match self.inner.lock() {
            Ok(c) => Ok(c),
            Err(_) => {
                let why = "a request panicked while it held the controller".to_string();
                self.fail(why.clone());
                Err(stopping(&why))
            }
        }
    }

    /// The controller even after a panic: for undoing a failed request's
    /// steps and for stopping the threads, never for new changes.
    pub(super) fn lock_for_undo(&self) -> MutexGuard<'_, Controller> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the controller, unless the daemon is stopping.
    pub fn with<R>(&self, f: impl FnOnce(&mut Controller) -> R) -> Option<R> {
        let mut c = self.lock().ok()?;
        Some(f(&mut c))
    }

    /// Executes one API request.
    pub fn handle(&self, req: Request) -> Result<Value, ApiError> {
        match catch_unwind(AssertUnwindSafe(|| {
            let result = self.dispatch(req);
            // Whatever the request changed (endpoints, networks,
            // labels), the policies follow.
            if let Ok(mut c) = self.lock() {
                c.sync_policies();
            }
            result
        })) {
            Ok(result) => result,
            Err(panic) => Err(self.panicked(&*panic)),
        }
    }

    /// A request panicked: the daemon stops; the answer says why.
    pub(super) fn panicked(&self, panic: &(dyn std::any::Any + Send)) -> ApiError {
        let what = panic_message(panic);
        let why = format!("a request panicked: {what}");
        self.fail(why);
        ApiError::internal(format!(
            "vswitchd hit a bug handling this request ({what}); what the request had set up was undone, and the daemon stops so that a restart restores its state from the store"
        ))
    }

    fn dispatch(&self, req: Request) -> Result<Value, ApiError> {
        match req {
            // These wait on netlink or on a process: run in phases, with
            // the lock released in between.
            Request::NetworkConnect(net, c) => {
                let container = c.container.clone();
                self.connect(&net, c)?;
                to_value(self.lock()?.container_inspect(&container)?)
            }
            Request::NetworkDisconnect(net, d) => {
                self.disconnect(&net, &d.container)?;
                to_value(d.container)
            }
            Request::ContainerRemove(name) => {
                self.remove_container(&name)?;
                to_value(name)
            }
            Request::ContainerExited(name, e) => {
                self.container_exited(&name, Some(&e.id), Some(e.exit_code))?;
                to_value(self.lock()?.container_inspect(&name)?)
            }
            Request::ContainerUpdate(name, u) => to_value(self.update_container(&name, u)?),
            Request::ContainerPrune => to_value(self.prune_containers()?),
            // Answered by the server as a stream; here, the interfaces the
            // capture would watch (an error if none).
            Request::Capture(c) => {
                let ports = self.lock()?.capture_ports(&c)?;
                to_value(ports.into_iter().map(|(_, name)| name).collect::<Vec<_>>())
            }
            // Answered by the server as a stream; here, only whether there
            // is a log to stream.
            Request::ContainerLogs { name, .. } => {
                let ctrl = self.lock()?;
                ctrl.log_of(&name)?;
                to_value(ctrl.container_inspect(&name)?)
            }
            Request::CniAdd(a) => to_value(self.cni_add(a)?),
            Request::CniDel(k) => {
                self.cni_del(&k)?;
                to_value(serde_json::json!({}))
            }
            Request::CniCheck(k) => to_value(self.cni_check(&k)?),
            Request::CniGc(g) => to_value(self.cni_gc(&g)?),
            // Reads the container's interfaces without the lock.
            Request::Trace(t) => to_value(self.trace(t)?),
            // Probes from the container's namespace without the lock.
            Request::Doctor(d) => to_value(self.doctor(d)?),
            // Answered by the server as a stream from the log; nothing
            // of the controller's is asked.
            Request::Events(_) => to_value(serde_json::json!({})),
            // The others do not wait: one step under the lock.
            Request::Ping => to_value("OK"),
            Request::NetworkList => to_value(self.lock()?.network_list()),
            Request::NetworkCreate(c) => {
                let mut ctrl = self.lock()?;
                let name = c.name.clone();
                ctrl.create_network(c)?;
                to_value(ctrl.network_inspect(&name)?)
            }
            Request::NetworkInspect(name) => to_value(self.lock()?.network_inspect(&name)?),
            Request::NetworkRemove(name) => {
                let mut ctrl = self.lock()?;
                if let Some(d) = ctrl.docker.network_on(&name) {
                    return Err(ApiError::conflict(format!(
                        "network `{name}` is Docker's network {}; remove it with `docker network rm`",
                        &d.id[..d.id.len().min(12)]
                    )));
                }
                ctrl.remove_network(&name)?;
                to_value(name)
            }
            Request::NetworkPrune => to_value(self.lock()?.prune_networks()),
            Request::ContainerList => {
                let ctrl = self.lock()?;
                let list: Result<Vec<_>, _> = ctrl
                    .containers
                    .keys()
                    .map(|n| ctrl.container_inspect(n))
                    .collect();
                to_value(list?)
            }
            Request::ContainerCreate(c) => {
                let mut ctrl = self.lock()?;
                let name = c.name.clone();
                ctrl.create_container(c)?;
                to_value(ctrl.container_inspect(&name)?)
            }
            Request::ContainerInspect(name) => to_value(self.lock()?.container_inspect(&name)?),
            Request::Stats => to_value(self.lock()?.stats()?),
            Request::ClusterJoin(j) => to_value(self.lock()?.join_cluster(&j.peers)?),
            Request::ClusterLeave => to_value(self.lock()?.leave_cluster()?),
            Request::ClusterMembers => to_value(self.lock()?.members()?),
            Request::VtepList(n) => to_value(self.lock()?.vtep_list(&n)?),
            Request::VtepAdd(n, v) => to_value(self.lock()?.vtep_add(&n, &v.address)?),
            Request::VtepRemove(n, v) => to_value(self.lock()?.vtep_remove(&n, &v.address)?),
            Request::IpamReclaim(r) => to_value(self.lock()?.ipam_reclaim(&r.host)?),
            Request::PolicyCreate(p) => to_value(self.lock()?.policy_create(p)?),
            Request::PolicyList => to_value(self.lock()?.policy_list()?),
            Request::PolicyInspect(n) => to_value(self.lock()?.policy_inspect(&n)?),
            Request::PolicyRemove(n) => {
                self.lock()?.policy_remove(&n)?;
                to_value(n)
            }
        }
    }

    /// Counts a request refused before decoding.
    pub fn count_bad_request(&self) {
        let _ = self.with(|c| c.count_bad_request());
    }

    /// Marks the daemon as stopping for `why` and wakes [`Self::failed`].
    pub(super) fn fail(&self, why: String) {
        tracing::error!(reason = %why, "vswitchd stops: its state may be half changed; a restart restores it from the store");
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        self.stop.notify_one();
    }

    /// Why the daemon must stop, if it must.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Returns once a request has panicked, with the reason.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(why) = self.failure() {
                return why;
            }
            self.stop.notified().await;
        }
    }

    /// Stops the datapath, gossip and QUIC (also after a panic).
    pub fn shutdown(&self) {
        self.lock_for_undo().shutdown();
    }

    /// The gossip events, for [`Controller::handle_cluster_event`].
    pub fn take_events(&self) -> Option<std::sync::mpsc::Receiver<overlay::GossipEvent>> {
        self.with(|c| c.take_events()).flatten()
    }
}

fn stopping(why: &str) -> ApiError {
    // Not 503: the API server retries those.
    ApiError::internal(format!(
        "vswitchd is stopping after an internal error ({why}); restart it"
    ))
}

/// The message of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}
