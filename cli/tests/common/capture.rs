//! tcpdump on a test's underlay, and a ping whose payload is a pattern to
//! look for in the capture: what shows a tunnel carries frames encrypted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ns_exec, Underlay};

/// tcpdump on the underlay bridge, writing a pcap file; stopped on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    pub fn start(ul: &Underlay, tag: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("vse-{tag}-{}.pcap", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ul.ns.name,
                "timeout",
                "60",
                "tcpdump",
                "-i",
                "br0",
            ])
            .args(["-U", "-s", "0", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        // Capturing once the file exists.
        let start = Instant::now();
        while !file.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture {
            child: Some(child),
            file,
        }
    }

    /// Stops tcpdump; returns the captured bytes.
    pub fn finish(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        self.stop();
        std::fs::read(&self.file).expect("pcap file")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The bytes `ping -p` fills its payload with.
pub const SECRET: &[u8] = b"QUICSECRET!";

pub fn secret_ping(from: &str, to: &str) -> std::process::Output {
    let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
    ns_exec(
        from,
        &[
            "ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", "200", "-p", &hex, to,
        ],
    )
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
