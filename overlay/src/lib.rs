//! Overlay: VXLAN codec, tunnels, gossip membership (see issue 3).
#![deny(unsafe_code)]
