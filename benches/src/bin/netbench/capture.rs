//! The `capture` group: the local group's two vswitch containers with a
//! `vswitch capture` of container A running through every workload, against
//! the same setup without one (the baseline). Issue 15: a capture that
//! keeps up costs under 10 % of a TCP stream.
//!
//! - `Off`: no capture (the reference).
//! - `Headers`: `vswitch capture A -s 128 -w /dev/null`, the headers of
//!   every frame (what a capture for troubleshooting takes).
//! - `Whole`: `vswitch capture A -w /dev/null`, whole super-frames.
//!
//! The capture's client writes to `/dev/null`; its closing line (frames
//! captured, dropped) is in its log under the work directory.

use crate::exec::Background;
use crate::scenario::{
    Deployment, Endpoints, Env, Netns, Scenario, VswitchHost, A_IP, B_IP, MTU, SUBNET,
};
use crate::Error;

/// What the capture takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Headers,
    Whole,
}

#[derive(Debug)]
pub struct VswitchCapture {
    pub mode: Mode,
}

#[derive(Debug)]
struct CaptureDeployment {
    ep: Endpoints,
    host: VswitchHost,
    capture: Option<Background>,
}

impl Scenario for VswitchCapture {
    fn key(&self) -> &'static str {
        match self.mode {
            Mode::Off => "vswitch-nocapture",
            Mode::Headers => "vswitch-capture-headers",
            Mode::Whole => "vswitch-capture-whole",
        }
    }
    fn title(&self) -> &'static str {
        match self.mode {
            Mode::Off => "vswitch, no capture",
            Mode::Headers => "vswitch, capture -s 128",
            Mode::Whole => "vswitch, capture whole frames",
        }
    }
    fn group(&self) -> &'static str {
        "capture"
    }
    fn is_baseline(&self) -> bool {
        self.mode == Mode::Off
    }
    fn description(&self) -> &'static str {
        match self.mode {
            Mode::Off => "the local group's vswitch scenario (two `vswitch run` containers on one bridge network), no capture",
            Mode::Headers => "the same with `vswitch capture A -s 128 -w /dev/null` running",
            Mode::Whole => "the same with `vswitch capture A -w /dev/null` running (whole super-frames)",
        }
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        let ns = Netns::create(&env.sh, format!("nb{}ch", env.tag))?;
        let mut host = VswitchHost::start(env, ns, "vswitchd-capture", &[])?;
        let net = format!("nb{}c", env.tag);
        host.create_network(&net, &["--subnet", SUBNET, "--mtu", &MTU.to_string()])?;
        let (a, b) = (format!("nb{}ca", env.tag), format!("nb{}cb", env.tag));
        for (name, ip) in [(&a, A_IP), (&b, B_IP)] {
            host.run_container(name, &net, &["--ip", &ip.to_string()], env.duration)?;
        }
        let capture = match self.mode {
            Mode::Off => None,
            Mode::Headers => Some(host.spawn_vs(
                &["capture", &a, "-s", "128", "-w", "/dev/null"],
                "vswitch-capture-headers",
            )?),
            Mode::Whole => {
                Some(host.spawn_vs(&["capture", &a, "-w", "/dev/null"], "vswitch-capture-whole")?)
            }
        };
        if capture.is_some() {
            // Running on the datapath before the first workload.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while host.vs_json(&["stats", "--json"])?["Captures"].as_u64() != Some(1) {
                if std::time::Instant::now() > deadline {
                    return Err(Error::Setup(format!(
                        "`vswitch capture {a}` did not start on the datapath"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let mut ep = Endpoints::direct(a, b, B_IP, MTU);
        ep.watched.extend(host.watched());
        Ok(Box::new(CaptureDeployment { ep, host, capture }))
    }
}

impl Deployment for CaptureDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        if let Some(mut c) = self.capture.take() {
            c.stop(std::time::Duration::from_secs(5));
            eprintln!("netbench: capture: {}", c.log_tail(1).trim());
        }
        self.host.teardown()
    }
}
