//! `vswitch capture CONTAINER|NETWORK [-i IFACE] [-c N] [-w FILE|-]
//! [--filter EXPR] [-s SNAPLEN]`: the frames vswitchd switches at a
//! container's ports (or every port of a network), as pcapng for
//! `tcpdump -r` and Wireshark with `-w`, else one line per frame.

use std::fs::File;
use std::io::{self, Write};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use clap::Args;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::PcapError;

use crate::api::{CaptureRequest, DEFAULT_SNAPLEN};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The container (its every interface, or the one -i names) or the
    /// network (every port of it on this host) to capture.
    pub target: String,
    /// Only this interface of the container (eth0, eth1, ...).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interface: Option<String>,
    /// Stop after N frames.
    #[arg(short = 'c', long = "count", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Write the frames as pcapng to FILE (`-` for stdout) instead of
    /// printing a line per frame.
    #[arg(short = 'w', long = "write", value_name = "FILE|-")]
    pub write: Option<String>,
    /// Only frames this tcpdump-style filter takes: ip, ip6, arp, tcp, udp,
    /// icmp, icmp6, vlan; [src|dst] host ADDR, net CIDR, port N,
    /// portrange N-M; ether [src|dst] host MAC; and, or, not, ( ).
    #[arg(long, value_name = "EXPR", default_value = "")]
    pub filter: String,
    /// Bytes kept of each frame, as tcpdump's -s (1 to 262144).
    #[arg(short = 's', long = "snaplen", value_name = "BYTES", default_value_t = DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(DEFAULT_SNAPLEN)))]
    pub snaplen: u32,
}

pub(super) async fn run(client: &Client, a: CaptureArgs) -> Result<()> {
    // Refused here with the parser's words rather than after a round trip.
    switch::capture::Filter::parse(&a.filter).map_err(|e| anyhow::anyhow!("--filter: {e}"))?;
    let req = CaptureRequest {
        target: a.target.clone(),
        interface: a.interface.clone(),
        count: a.count,
        filter: a.filter.clone(),
        snaplen: a.snaplen,
    };
    let mut out: Option<Box<dyn Write>> = match a.write.as_deref() {
        None => None,
        Some("-") => Some(Box::new(io::stdout().lock())),
        Some(path) => Some(Box::new(
            File::create(path).with_context(|| format!("creating {path}"))?,
        )),
    };
    let mut reader = Reader::default();
    let lines = out.is_none();
    let body = serde_json::to_vec(&req)?;
    if !lines {
        eprintln!("capturing on {} (pcapng)", a.target);
    }
    let streamed = {
        let stream = client.stream_request("POST", "/v1/captures", body, |bytes| {
            if let Some(w) = out.as_mut() {
                w.write_all(bytes)?;
                w.flush()?;
            }
            reader.feed(bytes, lines)
        });
        // Ctrl-C or SIGTERM ends the capture as tcpdump's does: what was
        // captured is kept and counted.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = stream => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    };
    match streamed {
        // A reader that went away (`-w - | head`) is not an error.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => {}
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    eprintln!(
        "{} frames captured, {} dropped by vswitchd (the reader was behind)",
        reader.packets, reader.dropped
    );
    Ok(())
}

/// Reads the pcapng stream as it arrives: interface names, frames (printed
/// as a line each with `lines`), the drops the statistics report.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
    parser: Option<PcapNgParser>,
    interfaces: Vec<String>,
    packets: u64,
    dropped: u64,
}

impl Reader {
    fn feed(&mut self, bytes: &[u8], lines: bool) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let rest = &self.buf[used..];
            if rest.is_empty() {
                break;
            }
            let Some(parser) = self.parser.as_mut() else {
                match PcapNgParser::new(rest) {
                    Ok((left, p)) => {
                        used = self.buf.len() - left.len();
                        self.parser = Some(p);
                        continue;
                    }
                    Err(PcapError::IncompleteBuffer) => break,
                    Err(e) => anyhow::bail!("vswitchd sent a capture that does not parse: {e}"),
                }
            };
            let (left, block) = match parser.next_block(rest) {
                Ok(x) => x,
                Err(PcapError::IncompleteBuffer) => break,
                Err(e) => anyhow::bail!("vswitchd sent a capture that does not parse: {e}"),
            };
            let consumed = rest.len() - left.len();
            match block {
                Block::InterfaceDescription(i) => {
                    let name = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    });
                    self.interfaces
                        .push(name.unwrap_or_else(|| format!("if{}", self.interfaces.len())));
                }
                Block::EnhancedPacket(p) => {
                    self.packets += 1;
                    if lines {
                        let inbound = p.options.iter().any(
                            |o| matches!(o, EnhancedPacketOption::Flags(f) if f & 0b11 == 0b01),
                        );
                        let iface = self
                            .interfaces
                            .get(p.interface_id as usize)
                            .map_or("?", String::as_str);
                        writeln!(
                            io::stdout().lock(),
                            "{} {iface} {} {}",
                            humantime::format_rfc3339_micros(UNIX_EPOCH + p.timestamp),
                            if inbound { "In " } else { "Out" },
                            summary(&p.data, p.original_len)
                        )?;
                    }
                }
                Block::InterfaceStatistics(s) => {
                    for o in &s.options {
                        if let InterfaceStatisticsOption::IsbOsDrop(d) = o {
                            self.dropped = *d;
                        }
                    }
                }
                _ => {}
            }
            used += consumed;
        }
        self.buf.drain(..used);
        if lines {
            io::stdout().flush()?;
        }
        Ok(())
    }
}

/// One line about a frame, tcpdump-like: addresses, protocol, length.
fn summary(frame: &[u8], len: u32) -> String {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return format!("frame, length {len}");
    };
    let (src, dst, proto) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
            "IP",
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
            "IP6",
        ),
        _ => {
            let what = match frame.get(12..14) {
                Some([0x08, 0x06]) => "ARP",
                _ => "ethernet",
            };
            return format!(
                "{what} {} > {}, length {len}",
                mac(&frame[6..12]),
                mac(&frame[..6])
            );
        }
    };
    let detail = match &p.transport {
        Some(TransportSlice::Tcp(t)) => format!(
            "{src}.{} > {dst}.{}: TCP, {} bytes",
            t.source_port(),
            t.destination_port(),
            t.payload().len()
        ),
        Some(TransportSlice::Udp(u)) => format!(
            "{src}.{} > {dst}.{}: UDP, {} bytes",
            u.source_port(),
            u.destination_port(),
            u.payload().len()
        ),
        Some(TransportSlice::Icmpv4(i)) => {
            format!("{src} > {dst}: ICMP type {}", i.type_u8())
        }
        Some(TransportSlice::Icmpv6(i)) => {
            format!("{src} > {dst}: ICMP6 type {}", i.type_u8())
        }
        _ => format!("{src} > {dst}"),
    };
    format!("{proto} {detail}, length {len}")
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::datapath::{Captured, Direction};
    use crate::daemon::pcapng::PcapNgEncoder;
    use std::time::Duration;
    use switch::PortId;

    /// The stream read back in pieces of every size counts every frame and
    /// the drops reported.
    #[test]
    fn the_stream_is_read_in_any_pieces() {
        let mut e = PcapNgEncoder::new(&[(PortId(1), "a/eth0".into())], 65535).unwrap();
        let mut bytes = e.take(0);
        for i in 0..5u8 {
            e.packet(&Captured {
                time: Duration::from_secs(1),
                port: PortId(1),
                dir: Direction::In,
                len: 60,
                data: vec![i; 60],
            })
            .unwrap();
        }
        e.statistics(7, 2).unwrap();
        bytes.extend(e.take(0));
        for piece in [1, 3, 7, 64, bytes.len()] {
            let mut r = Reader::default();
            for chunk in bytes.chunks(piece) {
                r.feed(chunk, false).unwrap();
            }
            assert_eq!((r.packets, r.dropped), (5, 2), "pieces of {piece}");
            assert_eq!(r.interfaces, ["a/eth0"]);
        }
        let mut r = Reader::default();
        assert!(r.feed(&[0xff; 64], false).is_err());
    }

    #[test]
    fn a_ping_reads_as_one() {
        let mut f = vec![2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 3, 8, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            summary(&f, 42),
            "IP 10.0.0.2 > 10.0.0.3: ICMP type 8, length 42"
        );
    }
}
