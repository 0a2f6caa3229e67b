//! The system manifest (`tessera_manifest::Manifest::parse`) on arbitrary text.
//!
//! Asserts: no panic, in parsing, validation, or what the CLI and the gateway read from a
//! manifest that passed (producers, commands, trusted proxies); every error has a message.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tessera_manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = match Manifest::parse(text) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for (topic, producers) in m.producers() {
        assert!(!topic.is_empty() && !producers.is_empty());
    }
    for spec in m.services.values() {
        assert!(!spec.command.argv().is_empty());
    }
    let peers: [IpAddr; 3] = [
        [127, 0, 0, 1].into(),
        [10, 1, 2, 3].into(),
        "::ffff:10.1.2.3".parse().unwrap(),
    ];
    for block in &m.gateway.trusted_proxies {
        for peer in peers {
            let _ = block.contains(peer);
        }
    }
});
