//! The configuration: any TOML text is accepted or refused with a message naming what is wrong,
//! never a panic; an accepted configuration passes its own validation again.
#![no_main]

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use libfuzzer_sys::fuzz_target;
use rota::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
    match Config::extract(figment) {
        Ok(config) => config
            .validate()
            .expect("an accepted configuration validates"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
