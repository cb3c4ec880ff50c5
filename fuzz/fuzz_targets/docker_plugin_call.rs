//! Docker's plugin protocol decoding, fed arbitrary paths and bodies.
//! Input layout: the path up to a NUL, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_cli::daemon::docker::protocol::{Api, Call};

fuzz_target!(|data: &[u8]| {
    let (path, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    if let Ok(call) = Call::decode(&path, body) {
        // A decoded call belongs to the API its path names.
        assert_eq!(Api::of(&path), Some(call.api()));
        if let Call::Join(j) = &call {
            assert!(j.sandbox.is_absolute());
        }
    }
});
