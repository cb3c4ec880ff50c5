//! Fuzzes `overlay::vxlan::decapsulate` (and the `VxlanPacket` view and
//! `VxlanRepr`) with arbitrary UDP payloads, and checks:
//!
//! - it never panics, and accepts exactly the payloads with a whole header,
//!   the `I` flag set and at least an Ethernet header after it;
//! - the VNI is bytes 4..7 and the inner frame is everything after byte 8,
//!   borrowed, not copied;
//! - re-encapsulating what was read gives back the same VNI and frame, with
//!   the reserved bits cleared.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::vxlan::{
    decapsulate, encapsulate, VxlanError, VxlanPacket, VxlanRepr, FLAG_VNI, HEADER_LEN,
    INNER_MIN_LEN,
};

fuzz_target!(|data: &[u8]| {
    match decapsulate(data) {
        Ok((vni, inner)) => {
            assert!(data.len() >= HEADER_LEN + INNER_MIN_LEN);
            assert!(data[0] & FLAG_VNI != 0);
            assert_eq!(
                vni.get(),
                u32::from_be_bytes([0, data[4], data[5], data[6]])
            );
            assert_eq!(inner.as_ptr(), data[HEADER_LEN..].as_ptr());
            assert_eq!(inner.len(), data.len() - HEADER_LEN);

            let mut out = vec![0xffu8; data.len()];
            let n = encapsulate(vni, inner, &mut out).expect("same size fits");
            assert_eq!(n, data.len());
            assert_eq!(&out[..4], &[FLAG_VNI, 0, 0, 0]);
            assert_eq!(out[7], 0);
            assert_eq!(decapsulate(&out), Ok((vni, inner)));
        }
        Err(VxlanError::Truncated) => assert!(data.len() < HEADER_LEN),
        Err(VxlanError::NoVni) => {
            assert!(data.len() >= HEADER_LEN && data[0] & FLAG_VNI == 0)
        }
        Err(VxlanError::InnerTooShort) => {
            assert!(data[0] & FLAG_VNI != 0);
            assert!((HEADER_LEN..HEADER_LEN + INNER_MIN_LEN).contains(&data.len()));
        }
        Err(VxlanError::BufferTooSmall) => unreachable!("decapsulate never writes"),
    }

    if let Ok(packet) = VxlanPacket::new_checked(data) {
        // No accessor panics after new_checked.
        let _ = (packet.flags(), packet.vni_flag(), packet.payload().len());
        let repr = VxlanRepr::parse(&packet).expect("checked packets parse");
        assert_eq!(repr.vni, packet.vni());
        assert_eq!(repr.buffer_len(), HEADER_LEN);
    }
});
