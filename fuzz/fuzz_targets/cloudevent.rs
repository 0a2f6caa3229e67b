//! CloudEvents as each side reads them: the consumer's `tessera_events::Event` (serde_json),
//! the control plane's check and key of every event it appends
//! (`tessera_control::events::event_key`), and the log's fetch answers as the bus reads them
//! (`tessera_events::read_fetch_answer`).
//!
//! Asserts: no panic; an event the consumer reads writes out and reads back the same; the log
//! takes every event the consumer reads as a CloudEvent (specversion 1.0, an id) and keys it
//! as the consumer does; a fetch answer's events keep the partition and offset they came with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use tessera_events::wire::FetchAnswer;
use tessera_events::{Event, read_fetch_answer};
use tessera_fuzz::Plan;

fuzz_target!(|data: &[u8]| {
    let plan = Plan::new(data);
    // The sizes are not used here: the payload is everything after the flags.
    let payload = &data[data.len().min(1)..];
    if plan.flags & 1 == 0 {
        event(payload);
    } else {
        fetch_answer(payload, plan.flags & 2 != 0);
    }
});

fn event(json: &[u8]) {
    let read = serde_json::from_slice::<Event>(json);
    if let Ok(e) = &read {
        let _ = e.trace();
        let again: Event = serde_json::from_slice(&serde_json::to_vec(e).unwrap())
            .expect("an event written out reads back");
        assert_eq!(&again, e);
    }
    // What the log is sent: raw JSON values, each checked and keyed.
    let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(json) else {
        return;
    };
    let key = tessera_control::events::event_key(0, &raw);
    if let Ok(e) = &read {
        if e.specversion == "1.0" && !e.id.is_empty() {
            let key = key.unwrap_or_else(|err| panic!("the log refuses a CloudEvent: {err}"));
            assert_eq!(key, e.key());
        } else {
            assert!(key.is_err());
        }
    }
}

fn fetch_answer(json: &[u8], committing: bool) {
    let (committed, batch) = read_fetch_answer(json, committing);
    assert_eq!(committed.is_some(), committing && batch.is_ok());
    let Ok(batch) = batch else {
        return;
    };
    let answer: FetchAnswer<'_> = serde_json::from_slice(json).expect("the bus read it");
    let sent = answer.partition.map_or(0, |_| answer.events.len())
        + answer.more.iter().map(|p| p.events.len()).sum::<usize>();
    assert_eq!(batch.len(), sent);
    for part in &batch.parts {
        for (offset, event) in &part.events {
            if let Ok(e) = event {
                let d = e
                    .delivery
                    .as_ref()
                    .expect("a delivered event says where from");
                assert_eq!((d.partition, d.offset), (part.partition, *offset));
            }
        }
    }
}
