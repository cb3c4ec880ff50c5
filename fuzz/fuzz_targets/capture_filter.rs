//! `vswitch capture --filter`: any expression (it arrives through the API)
//! is parsed or refused, never panics, and a parsed filter matches any
//! frame, however short or odd, without panicking. The first byte splits
//! the input into the expression and the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switch::capture::Filter;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let (expr, frame) = rest.split_at(at);
    let Ok(expr) = std::str::from_utf8(expr) else {
        return;
    };
    if let Ok(f) = Filter::parse(expr) {
        let _ = f.matches(frame);
        // What parsed parses again the same.
        assert_eq!(Filter::parse(&f.to_string()).as_ref(), Ok(&f));
    }
});
