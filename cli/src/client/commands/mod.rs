//! `vswitch` subcommands, shaped like `docker network` and `docker run`:
//! one module per subcommand, as netavark's `src/commands/` has them, and
//! here the command line itself and its dispatch.

mod capture;
mod cluster;
mod doctor;
mod events;
mod inspect;
mod ipam;
mod logs;
mod network;
mod output;
mod policy;
mod port;
mod ps;
mod publish;
mod rm;
mod run;
mod stats;
mod supervise;
mod trace;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Client;

pub use capture::CaptureArgs;
pub use cluster::{JoinArgs, MembersArgs};
pub use doctor::DoctorArgs;
pub use events::EventsArgs;
pub use inspect::InspectArgs;
pub use ipam::IpamCmd;
pub use logs::LogsArgs;
pub use network::{ConnectArgs, CreateArgs, NetworkCmd, VtepCmd};
pub use output::Format;
pub use policy::PolicyCmd;
pub use port::PortArgs;
pub use ps::{human_duration, status_line, PsArgs, PsEntry};
pub use publish::Publish;
pub use rm::RmArgs;
pub use run::RunArgs;
pub use stats::StatsArgs;
pub use supervise::SuperviseArgs;
pub use trace::TraceArgs;

/// The `vswitch` command line.
#[derive(Debug, Parser)]
#[command(
    name = "vswitch",
    version,
    about = "Drive vswitchd, the userspace virtual switch for containers"
)]
pub struct Cli {
    /// The daemon's socket, as unix://PATH (default: VSWITCH_HOST, then
    /// /run/vswitch/vswitchd.sock, or $XDG_RUNTIME_DIR/vswitch/vswitchd.sock rootless).
    #[arg(long, global = true, value_name = "unix://PATH")]
    pub host: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Run a command in a new sandbox (a network namespace) on a network.
    Run(RunArgs),
    /// Remove containers: stop what `run` started, release its endpoints
    /// and addresses, delete its namespace and log; exited ones too.
    Rm(RmArgs),
    /// List containers: running ones, with -a exited ones too.
    Ps(PsArgs),
    /// Print what a `run -d` command wrote; -f follows until it exits.
    Logs(LogsArgs),
    /// Manage containers.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// List a container's published ports, as `docker container port`.
    Port(PortArgs),
    /// Show a container's endpoints, addresses and MACs.
    Inspect(InspectArgs),
    /// Per-port packets, bytes and drops.
    Stats(StatsArgs),
    /// Capture the frames a container's ports (or a network's) switch: a
    /// line per frame, or pcapng for tcpdump -r and Wireshark with -w.
    Capture(CaptureArgs),
    /// Follow a synthetic frame from a container through the switch's own
    /// decisions, step by step, sending nothing; exits 1 when it would be
    /// dropped.
    Trace(TraceArgs),
    /// Run the troubleshooting checklist for real: the daemon, a
    /// container's interface, gateway and DNS, and what it should reach;
    /// each check ok or FAIL, with the evidence and the fix.
    Doctor(DoctorArgs),
    /// What vswitchd recorded (networks, endpoints, containers, ports,
    /// members) and the anomalies it detected; -f follows.
    Events(EventsArgs),
    /// Policies: what may cross between networks and between containers
    /// of a network (nothing crosses between networks unless allowed).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Join the cluster through one or more members (IP or IP:PORT).
    JoinCluster(JoinArgs),
    /// Leave the cluster.
    LeaveCluster,
    /// Cluster IPAM.
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// Cluster members: name, address, state, networks.
    Members(MembersArgs),
    /// `run -d`'s supervisor (started by `vswitch run -d` only).
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
    /// A self-contained tour on real namespaces; cleans up after itself.
    Demo {
        /// The vswitchd binary to start (default: next to this one).
        #[arg(long, value_name = "PATH")]
        vswitchd: Option<PathBuf>,
    },
}

/// `vswitch container ...`.
#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// List containers (as `vswitch ps`).
    #[command(alias = "ps")]
    Ls(PsArgs),
    /// Remove every exited container; prints their names.
    Prune,
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    if let Command::Demo { vswitchd } = cli.command {
        return super::demo::run(vswitchd).await.map(|()| 0);
    }
    let client = Client::new(super::resolve_socket(cli.host.as_deref())?);
    match cli.command {
        Command::Network(cmd) => network::run(&client, cmd).await.map(|()| 0),
        Command::Run(args) => run::run(&client, args).await,
        Command::Rm(args) => rm::run(&client, args).await,
        Command::Ps(args) => ps::run(&client, args).await.map(|()| 0),
        Command::Logs(args) => logs::run(&client, args).await.map(|()| 0),
        Command::Capture(args) => capture::run(&client, args).await.map(|()| 0),
        Command::Container(ContainerCmd::Ls(args)) => ps::run(&client, args).await.map(|()| 0),
        Command::Container(ContainerCmd::Prune) => ps::prune(&client).await.map(|()| 0),
        Command::Supervise(args) => supervise::run(&client, args).await,
        Command::Port(args) => port::run(&client, args).await.map(|()| 0),
        Command::Inspect(args) => inspect::run(&client, args).await.map(|()| 0),
        Command::Stats(args) => stats::run(&client, args).await.map(|()| 0),
        Command::Trace(args) => trace::run(&client, args).await,
        Command::Doctor(args) => doctor::run(&client, args).await,
        Command::Events(args) => events::run(&client, args).await.map(|()| 0),
        Command::Policy(cmd) => policy::run(&client, cmd).await.map(|()| 0),
        Command::JoinCluster(args) => cluster::join(&client, args).await.map(|()| 0),
        Command::Ipam(cmd) => ipam::run(&client, cmd).await.map(|()| 0),
        Command::LeaveCluster => cluster::leave(&client).await.map(|()| 0),
        Command::Members(args) => cluster::members(&client, args).await.map(|()| 0),
        Command::Demo { .. } => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
