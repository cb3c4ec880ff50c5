//! The pcapng stream `vswitch capture` answers with: a section header, one
//! interface description per port watched (named `CONTAINER/IFACE`,
//! nanosecond timestamps), an enhanced packet block per frame with its
//! direction, and at the end interface statistics with the frames the
//! capture dropped, as tcpdump and Wireshark read them.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use switch::PortId;

use super::datapath::{Captured, Direction};

/// `epb_flags` direction bits (pcapng section 4.3.1).
const INBOUND: u32 = 0b01;
const OUTBOUND: u32 = 0b10;

/// Encodes a capture as pcapng, block by block, into bytes to send.
#[allow(missing_debug_implementations)] // pcap-file's writer is not Debug
pub struct PcapNgEncoder {
    writer: PcapNgWriter<Vec<u8>>,
    ports: Vec<PortId>,
}

impl PcapNgEncoder {
    /// The encoder, with the section header and one interface per port
    /// already written (see [`PcapNgEncoder::take`]).
    pub fn new(interfaces: &[(PortId, String)], snaplen: u32) -> std::io::Result<PcapNgEncoder> {
        let mut writer = PcapNgWriter::new(Vec::new()).map_err(io_err)?;
        for (_, name) in interfaces {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                    // pcap-file writes timestamps in nanoseconds.
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            writer.write_pcapng_block(idb).map_err(io_err)?;
        }
        Ok(PcapNgEncoder {
            writer,
            ports: interfaces.iter().map(|(p, _)| *p).collect(),
        })
    }

    /// Appends one frame; a frame of a port not described is skipped.
    pub fn packet(&mut self, c: &Captured) -> std::io::Result<()> {
        let Some((at, flags)) = self.block_of(c) else {
            return Ok(());
        };
        let epb = EnhancedPacketBlock {
            interface_id: at as u32,
            timestamp: c.time,
            original_len: c.len,
            data: Cow::Borrowed(&c.data),
            options: vec![EnhancedPacketOption::Flags(flags)],
        };
        self.writer.write_pcapng_block(epb).map_err(io_err)?;
        Ok(())
    }

    /// Appends one frame as [`PcapNgEncoder::packet`] does, but a frame of
    /// [`PcapNgEncoder::ZERO_COPY_AT`] bytes or more is not copied: what is
    /// buffered (ending with the block's header) goes to `pieces`, then the
    /// frame's own buffer; the rest of the block starts the next piece.
    pub fn packet_pieces(
        &mut self,
        c: Captured,
        pieces: &mut Vec<bytes::Bytes>,
        capacity: usize,
    ) -> std::io::Result<()> {
        if c.data.len() < Self::ZERO_COPY_AT {
            return self.packet(&c);
        }
        let Some((at, flags)) = self.block_of(&c) else {
            return Ok(());
        };
        // pcapng section 4.3, in the section's (native) byte order: the
        // header, the data padded to 32 bits, `epb_flags`, the end of the
        // options, the length again.
        let captured = c.data.len();
        let pad = (4 - captured % 4) % 4;
        let total = 28 + captured + pad + 8 + 4 + 4;
        let ts = c.time.as_nanos() as u64;
        let buf = self.writer.get_mut();
        for word in [
            6u32,
            total as u32,
            at as u32,
            (ts >> 32) as u32,
            ts as u32,
            captured as u32,
            c.len,
        ] {
            buf.extend_from_slice(&word.to_ne_bytes());
        }
        pieces.push(bytes::Bytes::from(self.take(capacity)));
        pieces.push(bytes::Bytes::from(c.data));
        let buf = self.writer.get_mut();
        buf.extend_from_slice(&[0u8; 3][..pad]);
        buf.extend_from_slice(&2u16.to_ne_bytes());
        buf.extend_from_slice(&4u16.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(&(total as u32).to_ne_bytes());
        Ok(())
    }

    /// The interface a frame is recorded on and its `epb_flags`; `None`
    /// for a port not described.
    fn block_of(&self, c: &Captured) -> Option<(usize, u32)> {
        let at = self.ports.iter().position(|p| *p == c.port)?;
        let flags = match c.dir {
            Direction::In => INBOUND,
            Direction::Out => OUTBOUND,
        };
        Some((at, flags))
    }

    /// Frames at least this long are sent from their own buffer by
    /// [`PcapNgEncoder::packet_pieces`]; shorter ones are copied, which
    /// costs less than a piece of their own.
    pub const ZERO_COPY_AT: usize = 4096;

    /// Appends interface statistics (at the end, or while the capture is
    /// quiet): `dropped` frames the capture lost so far (counted once, on
    /// the first interface), `matched` taken by the filter.
    pub fn statistics(&mut self, matched: u64, dropped: u64) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        for i in 0..self.ports.len() {
            let mut options = vec![InterfaceStatisticsOption::IsbEndTime(now)];
            if i == 0 {
                options.push(InterfaceStatisticsOption::IsbFilterAccept(matched));
                options.push(InterfaceStatisticsOption::IsbOsDrop(dropped));
            }
            let isb = InterfaceStatisticsBlock {
                interface_id: i as u32,
                timestamp: now,
                options,
            };
            self.writer.write_pcapng_block(isb).map_err(io_err)?;
        }
        Ok(())
    }

    /// The bytes written since the last call; the next ones go into a
    /// buffer of `capacity` bytes, allocated once (a piece that grew by
    /// doubling would copy itself and fault in fresh pages as it goes).
    pub fn take(&mut self, capacity: usize) -> Vec<u8> {
        std::mem::replace(self.writer.get_mut(), Vec::with_capacity(capacity))
    }

    /// Bytes written and not yet taken.
    pub fn buffered(&self) -> usize {
        self.writer.get_ref().len()
    }
}

fn io_err(e: pcap_file::PcapError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgParser};
    use std::time::Duration;

    /// What is written reads back: interfaces by name, each frame on its
    /// interface with its time, length and direction, the drops at the end.
    #[test]
    fn a_capture_reads_back() {
        let ifaces = [
            (PortId(4), "a/eth0".to_string()),
            (PortId(9), "b/eth0".to_string()),
        ];
        let mut e = PcapNgEncoder::new(&ifaces, 128).unwrap();
        let c = Captured {
            time: Duration::new(1_700_000_000, 123_456_789),
            port: PortId(9),
            dir: Direction::Out,
            len: 1500,
            data: vec![7u8; 128],
        };
        e.packet(&c).unwrap();
        e.statistics(3, 2).unwrap();
        let bytes = e.take(0);
        assert!(e.take(0).is_empty());
        let (mut rest, mut p) = PcapNgParser::new(&bytes).unwrap();
        let mut names = Vec::new();
        let mut packets = Vec::new();
        let mut drops = None;
        while !rest.is_empty() {
            let (r, block) = p.next_block(rest).unwrap();
            rest = r;
            match block {
                Block::InterfaceDescription(i) => {
                    names.push(i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    }))
                }
                Block::EnhancedPacket(b) => packets.push((
                    b.interface_id,
                    b.timestamp,
                    b.original_len,
                    b.data.len(),
                    b.options
                        .iter()
                        .any(|o| matches!(o, EnhancedPacketOption::Flags(f) if *f == OUTBOUND)),
                )),
                Block::InterfaceStatistics(s) if s.interface_id == 0 => {
                    drops = s.options.iter().find_map(|o| match o {
                        InterfaceStatisticsOption::IsbOsDrop(d) => Some(*d),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        assert_eq!(
            names,
            [Some("a/eth0".to_string()), Some("b/eth0".to_string())]
        );
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0], (1, c.time, 1500, 128, true));
        assert_eq!(drops, Some(2));
    }

    /// Large frames sent from their own buffers make the same stream, byte
    /// for byte, as frames copied into the encoder's.
    #[test]
    fn pieces_are_the_same_stream() {
        let ifaces = [(PortId(4), "a/eth0".to_string())];
        let frames: Vec<Captured> = [5000usize, 60, 65_535, 4096, 4097, 4098, 4099]
            .iter()
            .enumerate()
            .map(|(i, &n)| Captured {
                time: Duration::new(1_700_000_000 + i as u64, 987_654_321),
                port: PortId(4),
                dir: if i % 2 == 0 {
                    Direction::In
                } else {
                    Direction::Out
                },
                len: n as u32 + 3,
                data: (0..n).map(|b| (b * 7 + i) as u8).collect(),
            })
            .collect();
        let mut copied = PcapNgEncoder::new(&ifaces, 262_144).unwrap();
        let mut pieced = PcapNgEncoder::new(&ifaces, 262_144).unwrap();
        let mut pieces = Vec::new();
        for f in frames {
            copied.packet(&f).unwrap();
            pieced.packet_pieces(f, &mut pieces, 1024).unwrap();
        }
        assert!(pieces.len() >= 10, "the large frames went as pieces");
        let mut a = copied.take(0);
        copied.statistics(7, 0).unwrap();
        pieced.statistics(7, 0).unwrap();
        let mut b: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
        b.extend(pieced.take(0));
        let tail = copied.take(0);
        // The statistics carry the time they are written: compare up to it.
        a.extend(&tail[..8]);
        assert_eq!(&b[..a.len()], &a[..]);
        assert_eq!(b.len(), a.len() - 8 + tail.len());
    }
}
