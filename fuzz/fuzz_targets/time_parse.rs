//! The API's time parsing: any text is parsed or refused with a message, never a panic; a
//! parsed time formats to text that parses back to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota::api::time::{format, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ms) = parse(text) {
        let shown = format(ms);
        assert_eq!(parse(&shown), Ok(ms), "{text:?} -> {ms} -> {shown:?}");
    }
});
