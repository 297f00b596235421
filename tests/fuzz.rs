//! Fuzz targets for the parsers that take bytes from strangers, run as ordinary tests on
//! stable Rust (see tests/common/mutate.rs for the fuzzer and why it is not cargo-fuzz).
//!
//! Budget: `PLAZA_FUZZ_ITERATIONS` mutated inputs per target (default 200,000: the whole file
//! runs in seconds in CI), seed `PLAZA_FUZZ_SEED`. A long local run, as recorded in
//! docs/fuzzing.md:
//!
//! ```text
//! PLAZA_FUZZ_ITERATIONS=10000000 cargo test --release --locked --test fuzz -- --nocapture
//! ```
//!
//! Adding a target: a `#[test]` that builds its seeds and a [`Mutator`] (with a dictionary of
//! tokens the format uses) and calls [`mutate::run`] with a check that panics on whatever
//! property the parser must keep. Every target must at least never panic.

mod common;

use common::mutate::{self, Mutator};
use common::signal_seeds::{SIGNAL_DICTIONARY, SIGNAL_SEEDS};
use plaza::forward::{ParticipantId, TrackId};
use plaza::signal::protocol::{parse_client_message, ClientMessage, ErrorCode, CLIENT_TYPES};
use plaza::signal::text;
use serde_json::Value;

const DEFAULT_ITERATIONS: u64 = 200_000;

/// Every code an unreadable message can get from the parser (the rest need a session).
const PARSER_CODES: &[&str] = &["malformed-message", "unknown-type", "invalid-message"];

/// The signalling parser never panics; every message it accepts re-serialises to itself;
/// every error carries a stable code, a readable bounded message, and the right `request`.
fn check_signal(input: &[u8]) {
    // The session only ever sees text frames, which are valid UTF-8 by the time it does.
    let text = String::from_utf8_lossy(input);
    match parse_client_message(&text) {
        Ok(message) => check_accepted(&message),
        Err(e) => {
            let code = e.code.as_str();
            assert!(PARSER_CODES.contains(&code), "unexpected code {code}");
            let wire = serde_json::to_value(e.clone().into_message()).expect("errors serialise");
            assert_eq!(wire["type"], "error");
            assert_eq!(wire["code"], code, "the wire code is the stable string");
            assert!(!e.message.is_empty(), "errors say what is wrong");
            assert!(
                e.message.chars().count() <= 400,
                "error messages are bounded, not an echo of the input: {} chars",
                e.message.chars().count()
            );
            match e.code {
                ErrorCode::MalformedMessage => assert_eq!(e.request, None),
                ErrorCode::UnknownType => {
                    let r = e.request.as_deref().expect("unknown types are named");
                    assert!(r.chars().count() <= 64 && !CLIENT_TYPES.contains(&r));
                }
                ErrorCode::InvalidMessage => {
                    let r = e
                        .request
                        .as_deref()
                        .expect("invalid messages name their type");
                    assert!(CLIENT_TYPES.contains(&r), "request {r:?}");
                }
                _ => unreachable!("checked above"),
            }
        }
    }
}

fn check_accepted(message: &ClientMessage) {
    assert!(CLIENT_TYPES.contains(&message.type_name()));
    let json = serde_json::to_string(message).expect("accepted messages serialise");
    let again = parse_client_message(&json)
        .unwrap_or_else(|e| panic!("re-serialised {json} is refused: {e}"));
    assert_eq!(&again, message, "re-serialised as {json}");
    let value: Value = serde_json::from_str(&json).expect("serde_json writes JSON");
    assert_eq!(value["type"], message.type_name());
    // The text rules the session applies next take whatever the parser let through, and a
    // label that passes is always a chat line that passes.
    let texts: Vec<&str> = match message {
        ClientMessage::Join { room, name, .. } => vec![room, name],
        ClientMessage::Chat { text, .. } => vec![text],
        _ => vec![],
    };
    for t in texts {
        if text::check_label(t).is_ok() {
            assert_eq!(text::check_chat(t), Ok(()), "{t:?}");
        }
    }
}

#[test]
fn fuzz_signalling_parser() {
    let seeds: Vec<Vec<u8>> = SIGNAL_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut mutator = Mutator::new(mutate::seed(), SIGNAL_DICTIONARY, 300 * 1024);
    mutate::run(
        "signalling_parser",
        &seeds,
        &mut mutator,
        mutate::iterations(DEFAULT_ITERATIONS),
        Mutator::mutate_json,
        &check_signal,
    );
}

/// A wire id parses only in the exact form the server prints, nonzero; JSON strings parse
/// the same way.
fn check_wire_ids(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let p = text.parse::<ParticipantId>();
    let t = text.parse::<TrackId>();
    if let Ok(id) = p {
        assert_eq!(id.to_string(), text, "a participant id has one spelling");
        assert!(id.0 > 0);
    }
    if let Ok(id) = t {
        assert_eq!(id.to_string(), text, "a track id has one spelling");
        assert!(id.0 > 0);
    }
    assert!(p.is_err() || t.is_err(), "no text is both kinds of id");
    let json = serde_json::to_string(&*text).expect("strings serialise");
    assert_eq!(serde_json::from_str::<ParticipantId>(&json).ok(), p.ok());
    assert_eq!(serde_json::from_str::<TrackId>(&json).ok(), t.ok());
}

#[test]
fn fuzz_wire_ids() {
    let seeds: Vec<Vec<u8>> = [
        "p1",
        "t42",
        "p18446744073709551615",
        "t18446744073709551616",
        "t0",
        "p+1",
        "p-1",
        "t007",
        "p 1",
        "p1 ",
        "t",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let dictionary = [
        "p", "t", "+", "-", "0", "00", "1", "9", " ", "\u{661}", "\u{FF11}", "e", ".", "_",
    ];
    let mut mutator = Mutator::new(mutate::seed(), &dictionary, 64);
    mutate::run(
        "wire_ids",
        &seeds,
        &mut mutator,
        mutate::iterations(DEFAULT_ITERATIONS),
        Mutator::mutate_bytes,
        &check_wire_ids,
    );
}

/// The mutator itself: deterministic for a seed, and it produces JSON that still parses
/// often enough to reach past the parser (a blind fuzzer is only as good as that).
#[test]
fn the_mutator_is_deterministic_and_keeps_json_mostly_json() {
    let seeds: Vec<Vec<u8>> = SIGNAL_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    let outputs = |seed| {
        let mut m = Mutator::new(seed, SIGNAL_DICTIONARY, 300 * 1024);
        (0..2000)
            .map(|i| m.mutate_json(&seeds[i % seeds.len()], &seeds[(i + 1) % seeds.len()]))
            .collect::<Vec<_>>()
    };
    let a = outputs(7);
    assert_eq!(a, outputs(7), "same seed, same inputs");
    assert_ne!(a, outputs(8), "another seed, other inputs");
    let json = a
        .iter()
        .filter(|x| serde_json::from_slice::<Value>(x).is_ok())
        .count();
    let accepted = a
        .iter()
        .filter(|x| parse_client_message(&String::from_utf8_lossy(x)).is_ok())
        .count();
    assert!(json > 1000, "only {json} of 2000 mutated inputs are JSON");
    assert!(
        accepted > 100,
        "only {accepted} of 2000 mutated inputs are accepted messages"
    );
}
