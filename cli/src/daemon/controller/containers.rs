//! Containers (sandboxes): records, the life of `vswitch run`'s process
//! (created, running, exited with its code), `vswitch rm`, `container
//! prune`, `vswitch inspect` and `ps`.
//!
//! `vswitch run` registers the container with its command, starts the
//! command and says which process it is and which process waits for it
//! (the supervisor: `vswitch run` itself in the foreground, its
//! `__supervise` child with `-d`). The supervisor reports the exit code
//! (`POST /v1/containers/NAME/exited`); the daemon also waits on both
//! processes itself ([`procwatch`]), so a container whose supervisor was
//! killed, or that ended while the daemon was down, is found exited too,
//! with the code from the exit file `run -d`'s supervisor writes
//! ([`container_log`]), or none. When the command exits, the container's
//! endpoints are released (addresses, published ports, DNS names) and the
//! namespace vswitch made is deleted, as Docker does for a stopped
//! container; the record stays, with its exit code, log and the names of
//! its networks, until `vswitch rm` or `vswitch container prune`.

use super::*;
use crate::container_log;
use crate::daemon::procwatch;
use crate::daemon::state::{ProcRef, Process, ProcessState};

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, to the millisecond).
fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

impl ControlPlane {
    /// `vswitch rm`: stops the container's process (without the lock: it
    /// may take seconds), disconnects it from every network, deletes its
    /// namespace if vswitch made it, and its log. Every step is tried; the
    /// failures are reported together.
    pub(super) fn remove_container(&self, name: &str) -> Result<(), ApiError> {
        let (running, detached, nets, log_dir) = {
            let mut c = self.lock()?;
            let rec = c.containers.get(name).ok_or_else(|| no_container(name))?;
            if let Some(network) = c.connecting.get(name) {
                return Err(ApiError::conflict(format!(
                    "container `{name}` is being connected to network `{network}`; try again when that is done"
                )));
            }
            if c.removing.contains(name) {
                return Err(ApiError::conflict(format!(
                    "container `{name}` is being removed already"
                )));
            }
            let (running, detached) = match &rec.process {
                Some(Process {
                    state:
                        ProcessState::Running {
                            pid, supervisor, ..
                        },
                    detached,
                    ..
                }) => (Some((*pid, *supervisor)), *detached),
                _ => (None, false),
            };
            let log_dir = container_log::dir(&c.config.state_dir, &rec.id);
            let nets = c.networks_of(name);
            c.removing.insert(name.to_string());
            (running, detached, nets, log_dir)
        };
        if let Some((pid, supervisor)) = running {
            // A detached command leads a process group of its own (its
            // supervisor made it so): the group is stopped, as Docker
            // stops every process of a container.
            stop_process(pid, detached);
            // The supervisor ends right after its command; once it has,
            // nothing writes into the log directory any more.
            if let Some(s) = supervisor.filter(|_| detached) {
                wait_gone(s, Duration::from_secs(3));
            }
            // It exited because of `rm`, as Docker's `die` before its
            // `destroy`: with the code its supervisor wrote, when it did.
            let code = container_log::read_exit_code(&log_dir);
            let _ = self.with(|c| c.emit_exit(name, code, true));
        }
        let mut errors = Vec::new();
        for n in nets {
            if let Err(e) = self.disconnect(&n, name) {
                errors.push(format!("disconnecting from `{n}`: {e}"));
            }
        }
        let record = {
            let mut c = self.lock()?;
            c.removing.remove(name);
            if let Err(e) = c.store.delete_container(name) {
                errors.push(e.to_string());
            }
            let record = c.containers.remove(name);
            if record.is_some() {
                c.emit_container("remove", name, &[]);
            }
            record
        };
        if let Some(p) = record.filter(|r| r.owns_netns).and_then(|r| r.netns) {
            let ns_name = p.file_name().and_then(|s| s.to_str()).unwrap_or(name);
            if let Err(e) = sandbox::delete_netns(ns_name) {
                errors.push(format!("deleting namespace {}: {e}", p.display()));
            }
        }
        match std::fs::remove_dir_all(&log_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("deleting the log {}: {e}", log_dir.display())),
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

    /// The command of a `vswitch run` container ended with `code` (`None`:
    /// the daemon found its processes gone; the exit file says the code,
    /// if there is one). `id`, when given, must be the container's: a late
    /// report never marks a newer container of the same name. Releases
    /// the endpoints and deletes the namespace vswitch made; the record
    /// stays. Nothing to do for a container that exited already or is
    /// being removed.
    pub(super) fn container_exited(
        &self,
        name: &str,
        id: Option<&str>,
        code: Option<i32>,
    ) -> Result<(), ApiError> {
        let (nets, netns) = {
            let mut c = self.lock()?;
            let rec = c.containers.get(name).ok_or_else(|| no_container(name))?;
            if id.is_some_and(|id| id != rec.id) {
                return Err(ApiError::not_found(format!(
                    "container `{name}` is not the container with that id (it was removed and made again)"
                )));
            }
            if c.removing.contains(name) {
                return Ok(());
            }
            let Some(process) = &rec.process else {
                return Err(ApiError::bad(format!(
                    "container `{name}` was not started by `vswitch run`; it has no process to exit"
                )));
            };
            let started_ms = match &process.state {
                ProcessState::Exited { .. } => return Ok(()),
                ProcessState::Created => None,
                ProcessState::Running { started_ms, .. } => Some(*started_ms),
            };
            let code = code.or_else(|| {
                process
                    .detached
                    .then(|| {
                        container_log::read_exit_code(&container_log::dir(
                            &c.config.state_dir,
                            &rec.id,
                        ))
                    })
                    .flatten()
            });
            let networks = c.networks_of(name);
            let mut rec = rec.clone();
            rec.process = Some(Process {
                state: ProcessState::Exited {
                    code,
                    started_ms,
                    finished_ms: now_ms(),
                    networks: networks.clone(),
                },
                ..process.clone()
            });
            // The namespace goes with the process; the record says so.
            let netns = if rec.owns_netns {
                rec.netns.take()
            } else {
                None
            };
            rec.owns_netns &= netns.is_none();
            c.store.put_container(&rec).map_err(internal)?;
            c.containers.insert(name.to_string(), rec);
            tracing::info!(container = name, exit_code = ?code, "container exited");
            c.emit_exit(name, code, false);
            (networks, netns)
        };
        for n in nets {
            if let Err(e) = self.disconnect(&n, name) {
                tracing::warn!(container = name, network = %n, error = %e, "releasing the endpoint of an exited container");
            }
        }
        if let Some(p) = netns {
            let ns_name = p.file_name().and_then(|s| s.to_str()).unwrap_or(name);
            if let Err(e) = sandbox::delete_netns(ns_name) {
                tracing::warn!(container = name, error = %e, "deleting the namespace of an exited container");
            }
        }
        Ok(())
    }

    /// `POST /v1/containers/NAME`: the process of a container started (or,
    /// with no pid, is gone without an exit code).
    pub(super) fn update_container(
        &self,
        name: &str,
        u: api::ContainerUpdate,
    ) -> Result<api::ContainerInspect, ApiError> {
        match u.pid {
            Some(pid) => {
                let (id, watch) = {
                    let mut c = self.lock()?;
                    let watch = c.set_running(name, pid, u.supervisor_pid)?;
                    (c.containers[name].id.clone(), watch)
                };
                self.watch_container(name, &id, watch);
            }
            None => {
                let known = self
                    .lock()?
                    .containers
                    .get(name)
                    .map(|r| r.process.is_some());
                match known {
                    None => return Err(no_container(name)),
                    Some(true) => self.container_exited(name, None, None)?,
                    // Nothing to forget.
                    Some(false) => {}
                }
            }
        }
        self.lock()?.container_inspect(name)
    }

    /// Waits, in a task of the runtime, for the processes in `procs` to
    /// end one after the other, then marks the container exited (if no
    /// report did so first).
    fn watch_container(&self, name: &str, id: &str, procs: Vec<ProcRef>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                container = name,
                "no runtime to watch the container's process on"
            );
            return;
        };
        let me = self.me.clone();
        let (name, id) = (name.to_string(), id.to_string());
        rt.spawn(async move {
            for p in procs {
                procwatch::exited(p).await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                let Some(plane) = me.upgrade() else { return };
                match plane.container_exited(&name, Some(&id), None) {
                    Ok(()) => {}
                    // Removed meanwhile.
                    Err(e) if e.status == 404 => {}
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "marking the container exited")
                    }
                }
            })
            .await;
        });
    }

    /// After a start: containers whose processes ended while no daemon
    /// watched are marked exited; the others are watched.
    pub fn watch_containers(&self) {
        let running: Vec<(String, String, Vec<ProcRef>)> = match self.lock() {
            Ok(c) => c
                .containers
                .values()
                .filter_map(|r| match &r.process {
                    Some(Process {
                        state:
                            ProcessState::Running {
                                pid, supervisor, ..
                            },
                        ..
                    }) => Some((
                        r.name.clone(),
                        r.id.clone(),
                        supervisor.iter().copied().chain([*pid]).collect(),
                    )),
                    _ => None,
                })
                .collect(),
            Err(_) => return,
        };
        for (name, id, procs) in running {
            if procs.iter().any(|p| procwatch::alive(*p)) {
                self.watch_container(&name, &id, procs);
            } else if let Err(e) = self.container_exited(&name, Some(&id), None) {
                tracing::warn!(container = %name, error = %e, "marking the container exited");
            }
        }
    }

    /// `vswitch container prune`: removes every exited container; returns
    /// their names.
    pub(super) fn prune_containers(&self) -> Result<api::ContainersPruned, ApiError> {
        let exited: Vec<String> = self
            .lock()?
            .containers
            .values()
            .filter(|r| {
                matches!(
                    r.process,
                    Some(Process {
                        state: ProcessState::Exited { .. },
                        ..
                    })
                )
            })
            .map(|r| r.name.clone())
            .collect();
        let mut deleted = Vec::new();
        for name in exited {
            match self.remove_container(&name) {
                Ok(()) => deleted.push(name),
                Err(e) => tracing::warn!(container = %name, error = %e, "prune: not removed"),
            }
        }
        Ok(api::ContainersPruned { deleted })
    }
}

impl Controller {
    pub(super) fn create_container(&mut self, c: api::ContainerCreate) -> Result<(), ApiError> {
        if let Some(rec) = self.containers.get(&c.name) {
            let exited = matches!(
                rec.process,
                Some(Process {
                    state: ProcessState::Exited { .. },
                    ..
                })
            );
            return Err(ApiError::conflict(format!(
                "container `{}` already exists{}; remove it with `vswitch rm {}` or pick another --name",
                c.name,
                if exited { " (exited)" } else { "" },
                c.name
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
        let id = random_id();
        let process = if !c.cmd.is_empty() || c.detached {
            Some(Process {
                cmd: c.cmd,
                detached: c.detached,
                state: ProcessState::Created,
            })
        } else {
            None
        };
        let rec = ContainerRecord {
            name: c.name.clone(),
            id: id.clone(),
            netns: c.netns,
            owns_netns: c.owns_netns,
            created_ms: Some(now_ms()),
            process,
            labels: c.labels,
        };
        if c.detached {
            let dir = container_log::dir(&self.config.state_dir, &id);
            container_log::create_dir(&dir).map_err(|e| {
                ApiError::internal(format!("making the log directory {}: {e}", dir.display()))
            })?;
        }
        if let Err(e) = self.store.put_container(&rec) {
            if c.detached {
                let _ = std::fs::remove_dir_all(container_log::dir(&self.config.state_dir, &id));
            }
            return Err(internal(e));
        }
        self.containers.insert(rec.name.clone(), rec);
        self.emit_container("create", &c.name, &[]);
        if let Some(pid) = c.pid {
            // A client of an earlier release tells the pid at once.
            self.set_running(&c.name, pid, None)?;
        }
        Ok(())
    }

    /// The command of `name` runs as `pid`, waited for by `supervisor`;
    /// returns the processes to watch, the supervisor first.
    fn set_running(
        &mut self,
        name: &str,
        pid: u32,
        supervisor: Option<u32>,
    ) -> Result<Vec<ProcRef>, ApiError> {
        let rec = self
            .containers
            .get(name)
            .ok_or_else(|| no_container(name))?;
        let gone = |what: &str, p: u32| {
            ApiError::bad(format!(
                "{what} {p} of container `{name}` is not a running process (in vswitchd's view)"
            ))
        };
        // The daemon signals these pids at `vswitch rm`: only the
        // container's own command (in its network namespace) and that
        // command's parent are taken.
        if let Some(netns) = &rec.netns {
            if !in_netns(pid, netns) {
                return Err(ApiError::bad(format!(
                    "process {pid} is not in the network namespace of container `{name}` ({})",
                    netns.display()
                )));
            }
        }
        if let Some(s) = supervisor {
            if parent_of(pid) != Some(s) {
                return Err(ApiError::bad(format!(
                    "supervisor {s} of container `{name}` is not the parent of its process {pid}"
                )));
            }
        }
        let pid = procwatch::current(pid).ok_or_else(|| gone("process", pid))?;
        let supervisor = match supervisor {
            Some(s) => Some(procwatch::current(s).ok_or_else(|| gone("supervisor", s))?),
            None => None,
        };
        let mut process = rec.process.clone().unwrap_or(Process {
            cmd: Vec::new(),
            detached: true,
            state: ProcessState::Created,
        });
        match process.state {
            ProcessState::Created => {}
            ProcessState::Running { .. } => {
                return Err(ApiError::conflict(format!(
                    "container `{name}` runs already"
                )))
            }
            ProcessState::Exited { .. } => {
                return Err(ApiError::conflict(format!(
                    "container `{name}` has exited; remove it with `vswitch rm {name}` and run it again"
                )))
            }
        }
        process.state = ProcessState::Running {
            pid,
            supervisor,
            started_ms: now_ms(),
        };
        let mut rec = rec.clone();
        rec.process = Some(process);
        self.store.put_container(&rec).map_err(internal)?;
        self.containers.insert(name.to_string(), rec);
        self.emit_container("start", name, &[("pid", pid.pid.to_string())]);
        Ok(supervisor.into_iter().chain([pid]).collect())
    }

    /// The networks `name` has an endpoint on.
    fn networks_of(&self, name: &str) -> Vec<String> {
        self.networks
            .iter()
            .filter(|(_, n)| n.endpoints.contains_key(name))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether `name` is a `vswitch run` container whose command exited.
    pub(super) fn has_exited(&self, name: &str) -> bool {
        matches!(
            self.containers.get(name).and_then(|r| r.process.as_ref()),
            Some(Process {
                state: ProcessState::Exited { .. },
                ..
            })
        )
    }

    /// Whether `vswitch logs -f` should keep waiting for more output of
    /// `name` (`id`): its command has not exited, and it is still there.
    pub(crate) fn log_continues(&self, name: &str, id: &str) -> bool {
        match self.containers.get(name) {
            Some(r) if r.id == id => !matches!(
                r.process,
                Some(Process {
                    state: ProcessState::Exited { .. },
                    ..
                }) | None
            ),
            _ => false,
        }
    }

    /// Where `vswitch logs NAME` reads: the container's id and log
    /// directory.
    pub(crate) fn log_of(&self, name: &str) -> Result<(String, PathBuf), ApiError> {
        let rec = self
            .containers
            .get(name)
            .ok_or_else(|| no_container(name))?;
        match &rec.process {
            Some(p) if p.detached => Ok((
                rec.id.clone(),
                container_log::dir(&self.config.state_dir, &rec.id),
            )),
            Some(_) => Err(ApiError::bad(format!(
                "container `{name}` ran in the foreground: its output went to the terminal of `vswitch run`; `vswitch run -d` keeps the output for `vswitch logs`"
            ))),
            None => Err(ApiError::bad(format!(
                "container `{name}` was not started by `vswitch run -d` (it came from `network connect`, Docker or CNI); vswitch keeps no output of it"
            ))),
        }
    }

    pub(super) fn container_inspect(&self, name: &str) -> Result<api::ContainerInspect, ApiError> {
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| no_container(name))?;
        let networks: BTreeMap<String, api::EndpointInspect> = self
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
        let (state, pid, network_names) = match c.process.as_ref().map(|p| &p.state) {
            Some(ProcessState::Created) => (
                api::ContainerState::default(),
                None,
                networks.keys().cloned().collect(),
            ),
            Some(ProcessState::Running {
                pid, started_ms, ..
            }) => (
                api::ContainerState {
                    status: api::ContainerStatus::Running,
                    running: true,
                    started_at: (*started_ms > 0).then(|| rfc3339_ms(*started_ms)),
                    ..Default::default()
                },
                Some(pid.pid),
                networks.keys().cloned().collect(),
            ),
            Some(ProcessState::Exited {
                code,
                started_ms,
                finished_ms,
                networks: was_on,
            }) => (
                api::ContainerState {
                    status: api::ContainerStatus::Exited,
                    running: false,
                    exit_code: *code,
                    started_at: started_ms.filter(|&t| t > 0).map(rfc3339_ms),
                    finished_at: Some(rfc3339_ms(*finished_ms)),
                },
                None,
                was_on.clone(),
            ),
            // A runtime's container (Docker, CNI) or one of `network
            // connect`: running while it has endpoints here.
            None => (
                api::ContainerState {
                    status: if networks.is_empty() {
                        api::ContainerStatus::Created
                    } else {
                        api::ContainerStatus::Running
                    },
                    running: !networks.is_empty(),
                    started_at: c.created_ms.map(rfc3339_ms),
                    ..Default::default()
                },
                None,
                networks.keys().cloned().collect(),
            ),
        };
        let log_path = c.process.as_ref().filter(|p| p.detached).map(|_| {
            container_log::dir(&self.config.state_dir, &c.id).join(container_log::LOG_FILE)
        });
        Ok(api::ContainerInspect {
            name: c.name.clone(),
            id: c.id.clone(),
            netns: c.netns.clone(),
            pid,
            host: self.config.node_name.clone(),
            networks,
            ports: self.port_bindings(name),
            created: c.created_ms.map(rfc3339_ms),
            state,
            cmd: c
                .process
                .as_ref()
                .map(|p| p.cmd.clone())
                .unwrap_or_default(),
            network_names,
            log_path,
            labels: c.labels.clone(),
        })
    }
}

/// Whether process `pid` is in the network namespace mounted at `netns`
/// (the same nsfs inode as its `/proc/PID/ns/net`), or is ending: an
/// exiting process or a zombie has no namespaces left to read, and a quick
/// command of a foreground `run` is one by the time it is registered.
fn in_netns(pid: u32, netns: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/{pid}/ns/net")),
        std::fs::metadata(netns),
    ) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        // A process that is ending has given up its namespaces before it
        // is a zombie: it cannot be told apart, nor harmed.
        (Err(_), Ok(_)) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

/// A field of `/proc/PID/status`, trimmed.
fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

/// The parent of process `pid` (`PPid` in `/proc/PID/status`).
fn parent_of(pid: u32) -> Option<u32> {
    status_field(pid, "PPid:")?.parse().ok()
}

/// SIGTERM, then SIGKILL after a grace period, as `docker stop` does; to
/// the process group `p` leads when `group`.
pub(super) fn stop_process(p: ProcRef, group: bool) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    if !procwatch::alive(p) {
        return;
    }
    let target = Pid::from_raw(p.pid as i32);
    let signal = |s: Signal| {
        if group {
            killpg(target, s)
        } else {
            kill(target, s)
        }
    };
    if signal(Signal::SIGTERM).is_err() {
        return;
    }
    if wait_gone(p, Duration::from_secs(5)) {
        return;
    }
    let _ = signal(Signal::SIGKILL);
    wait_gone(p, Duration::from_secs(2));
}

/// Waits up to `within` for `p` to end; true if it did.
fn wait_gone(p: ProcRef, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while procwatch::alive(p) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
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
        self.emit_container("rename", new, &[("oldName", old.to_string())]);
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
