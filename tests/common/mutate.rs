//! A small deterministic mutational fuzzer for stable Rust: bytes in, bytes out.
//!
//! Why not cargo-fuzz: it needs nightly and a coverage-instrumented build, and CI runs stable.
//! This is blind (no coverage feedback), so it leans on good seeds and on mutations that know
//! the input's shape: byte-level ones for any format ([`Mutator::mutate_bytes`]), and for JSON
//! ones that keep the document mostly valid so inputs get past the parser into the checks
//! behind it ([`Mutator::mutate_json`]). Everything is driven by one xorshift PRNG from a seed,
//! so a failing run is reproduced by its seed and iteration number alone.
//!
//! Adding a target (see tests/fuzz.rs): give [`run`] a name, seeds, a dictionary of tokens
//! worth splicing in, a mutation function (usually one of the two above) and a check that
//! panics on a violated property.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde_json::Value;

/// xorshift64*: tiny, fast, and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Zero is xorshift's one fixed point.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Small numbers far more often than large ones: most useful lengths and counts are small.
    pub fn small(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.leading_zeros() as usize + 1);
        self.below((1usize << bits).min(max) + 1)
    }
}

/// Byte values that sit on boundaries of common encodings: ASCII controls and quotes, UTF-8
/// lead and continuation bytes, sign bits.
const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x07, 0x09, 0x0a, 0x0d, 0x1f, 0x20, b'"', b'\\', b'{', b'}', b'[', b']', b':',
    b',', b'0', b'9', b'-', b'+', b'e', 0x7f, 0x80, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0,
    0xf4, 0xf5, 0xfe, 0xff,
];

/// Strings that probe text handling: the hidden characters of src/signal/text.rs, edges of
/// UTF-16 and UTF-8, and JSON escapes that decode to them.
pub const UNICODE_EDGES: &[&str] = &[
    "\u{202E}",
    "\u{202A}",
    "\u{2066}",
    "\u{2069}",
    "\u{200B}",
    "\u{200D}",
    "\u{200E}",
    "\u{061C}",
    "\u{FEFF}",
    "\u{2028}",
    "\u{2029}",
    "\u{0}",
    "\u{7}",
    "\r",
    "\n",
    "\r\n",
    "\u{85}",
    "\u{AD}",
    "\u{E0041}",
    "\u{FFFD}",
    "\u{FFFF}",
    "\u{10FFFF}",
    "e\u{301}\u{301}\u{301}",
    "👩\u{200D}💻",
    "🏳\u{FE0F}\u{200D}🌈",
    "\u{1F600}",
    "é",
    "ﷺ",
];

/// Raw JSON value tokens that no `serde_json::Value` can hold, spliced in as text.
const RAW_VALUES: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "1e309",
    "-1e309",
    "1e-400",
    "-0",
    "0.0",
    "4294967296",
    "4294967295",
    "-1",
    "1.5",
    "\"\\ud800\"",
    "\"\\udfff\\ud800\"",
    "\"\\u0000\"",
    "\"\\u202e\"",
    "\"\\uFEFF\"",
    "\"\\/\"",
    "\"a\\u0000b\"",
    "true",
    "null",
    "[]",
    "{}",
];

pub struct Mutator {
    pub rng: Rng,
    /// Tokens worth splicing in for this target (field names, enum values, ids).
    pub dictionary: Vec<Vec<u8>>,
    /// Inputs grow no larger than this (the signalling limit is 256 KiB; larger costs time
    /// and finds nothing new).
    pub max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, dictionary: &[&str], max_len: usize) -> Mutator {
        Mutator {
            rng: Rng::new(seed),
            dictionary: dictionary.iter().map(|d| d.as_bytes().to_vec()).collect(),
            max_len,
        }
    }

    /// One to a few byte-level mutations of `input` (`other`: another corpus entry, for
    /// splicing).
    pub fn mutate_bytes(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = input.to_vec();
        let rounds = 1 + self.rng.small(7);
        for _ in 0..rounds {
            self.byte_mutation(&mut data, other);
        }
        data.truncate(self.max_len);
        data
    }

    fn byte_mutation(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let r = &mut self.rng;
        let len = data.len();
        match r.below(11) {
            // Flip one bit.
            0 if len > 0 => {
                let i = r.below(len);
                data[i] ^= 1 << r.below(8);
            }
            // Set a byte to an interesting value.
            1 if len > 0 => {
                let i = r.below(len);
                data[i] = *r.pick(INTERESTING_BYTES);
            }
            // Set a byte to anything.
            2 if len > 0 => {
                let i = r.below(len);
                data[i] = r.next_u64() as u8;
            }
            // Insert random or interesting bytes.
            3 => {
                let at = r.below(len + 1);
                let n = 1 + r.small(16);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        if r.chance(2) {
                            *r.pick(INTERESTING_BYTES)
                        } else {
                            r.next_u64() as u8
                        }
                    })
                    .collect();
                data.splice(at..at, bytes);
            }
            // Delete a range.
            4 if len > 0 => {
                let at = r.below(len);
                let n = 1 + r.small(len - at - 1);
                data.drain(at..at + n);
            }
            // Duplicate a range in place (repeats, deep-ish nesting of brackets).
            5 if len > 0 => {
                let at = r.below(len);
                let n = 1 + r.small((len - at - 1).min(64));
                let chunk = data[at..at + n].to_vec();
                let times = 1 + r.small(16);
                for _ in 0..times {
                    data.splice(at..at, chunk.iter().copied());
                }
            }
            // Splice: our head, the other input's tail.
            6 if !other.is_empty() => {
                let keep = r.below(len + 1);
                let from = r.below(other.len());
                data.truncate(keep);
                data.extend_from_slice(&other[from..]);
            }
            // Insert a dictionary token.
            7 if !self.dictionary.is_empty() => {
                let at = r.below(len + 1);
                let token = self.dictionary[r.below(self.dictionary.len())].clone();
                data.splice(at..at, token);
            }
            // Insert a unicode edge case.
            8 => {
                let at = r.below(len + 1);
                let edge = r.pick(UNICODE_EDGES).as_bytes().to_vec();
                data.splice(at..at, edge);
            }
            // Overwrite with an ASCII digit run (numbers: huge, zero-padded).
            9 if len > 0 => {
                let at = r.below(len);
                let n = 1 + r.small(24);
                let digits: Vec<u8> = (0..n).map(|_| b'0' + r.below(10) as u8).collect();
                data.splice(at..(at + 1).min(len), digits);
            }
            // Truncate.
            10 if len > 0 => {
                let keep = r.below(len);
                data.truncate(keep);
            }
            // The chosen mutation needs bytes that are not there: add one.
            _ => data.push(*r.pick(INTERESTING_BYTES)),
        }
    }

    /// A structure-aware mutation when `input` is JSON (one node of the document replaced,
    /// removed or multiplied; unknown or duplicate keys; values no `Value` can hold spliced in
    /// as text), and a byte-level one otherwise, or one time in four anyway.
    pub fn mutate_json(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        if self.rng.chance(4) {
            return self.mutate_bytes(input, other);
        }
        let Ok(mut doc) = serde_json::from_slice::<Value>(input) else {
            return self.mutate_bytes(input, other);
        };
        let other_doc = serde_json::from_slice::<Value>(other).ok();
        let rounds = 1 + self.rng.small(3);
        let mut raw = None;
        for _ in 0..rounds {
            raw = self.json_mutation(&mut doc, other_doc.as_ref()).or(raw);
        }
        let mut text = serde_json::to_string(&doc).expect("a Value serialises");
        // Raw tokens go where the placeholder string was left.
        if let Some(token) = raw {
            text = text.replacen(&format!("\"{PLACEHOLDER}\""), &token, 1);
        }
        let mut out = text.into_bytes();
        out.truncate(self.max_len);
        out
    }

    /// Mutates one node; may return a raw token to splice in at [`PLACEHOLDER`].
    fn json_mutation(&mut self, doc: &mut Value, other: Option<&Value>) -> Option<String> {
        let paths = node_paths(doc);
        let path = self.rng.pick(&paths).clone();
        let node = node_at(doc, &path);
        let r = &mut self.rng;
        match r.below(12) {
            // Another type altogether.
            0 => *node = self.any_value(),
            // A value no `Value` holds (huge numbers, lone surrogates): raw text.
            1 => {
                *node = Value::String(PLACEHOLDER.into());
                return Some(r.pick(RAW_VALUES).to_string());
            }
            // Deep nesting around it.
            2 => {
                let depth = 1 + r.small(300);
                let array = r.chance(2);
                for _ in 0..depth {
                    let inner = node.take();
                    *node = if array {
                        Value::Array(vec![inner])
                    } else {
                        serde_json::json!({ "a": inner })
                    };
                }
            }
            // A long string.
            3 => {
                let unit = if r.chance(2) {
                    "x".to_string()
                } else {
                    r.pick(UNICODE_EDGES).to_string()
                };
                *node = Value::String(unit.repeat(1 + r.small(70_000)));
            }
            // A string with unicode edge cases spliced into it.
            4 => {
                let mut s = node.as_str().map(str::to_owned).unwrap_or_default();
                let mut at = r.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, r.pick::<&str>(UNICODE_EDGES));
                *node = Value::String(s);
            }
            // A dictionary token as a string (ids, enum values, field names).
            5 if !self.dictionary.is_empty() => {
                let token =
                    String::from_utf8_lossy(r.pick::<Vec<u8>>(&self.dictionary)).into_owned();
                *node = Value::String(token);
            }
            // An object gains an unknown or known key, or loses one.
            6 => match node {
                Value::Object(map) if !map.is_empty() && r.chance(2) => {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    map.remove(r.pick(&keys));
                }
                Value::Object(map) => {
                    let key = if self.dictionary.is_empty() || r.chance(3) {
                        format!("k{}", r.below(100))
                    } else {
                        String::from_utf8_lossy(r.pick::<Vec<u8>>(&self.dictionary)).into_owned()
                    };
                    map.insert(key, self.any_value());
                }
                _ => *node = serde_json::json!({}),
            },
            // An array repeats or loses an element.
            7 => match node {
                Value::Array(items) if !items.is_empty() => {
                    let i = r.below(items.len());
                    if r.chance(3) {
                        items.remove(i);
                    } else {
                        let copy = items[i].clone();
                        let n = 1 + r.small(64);
                        items.extend(std::iter::repeat_n(copy, n));
                    }
                }
                _ => *node = Value::Array(vec![node.take()]),
            },
            // A node from the other document (crosses message types).
            8 => {
                if let Some(other) = other {
                    let paths = node_paths(other);
                    let from = r.pick(&paths).clone();
                    *node = node_at(&mut other.clone(), &from).clone();
                }
            }
            // A duplicate key, which serde_json's Value would collapse: raw text again.
            9 => {
                if let Value::Object(map) = node {
                    if let Some(key) = map.keys().next().cloned() {
                        let value = self.any_value();
                        let dup = format!(
                            "{},\"{}\":{}",
                            serde_json::to_string(&map[&key]).expect("a Value serialises"),
                            key.replace('"', ""),
                            value
                        );
                        map.insert(key, Value::String(PLACEHOLDER.into()));
                        return Some(dup);
                    }
                }
            }
            // Numbers at and beyond the edges of the integer types.
            10 => {
                let n: i128 = *r.pick(&[
                    0,
                    1,
                    -1,
                    255,
                    256,
                    65535,
                    65536,
                    i32::MAX as i128,
                    u32::MAX as i128,
                    u32::MAX as i128 + 1,
                    i64::MAX as i128,
                    u64::MAX as i128,
                    i64::MIN as i128,
                ]);
                *node = serde_json::from_str(&n.to_string()).unwrap_or(Value::Null);
            }
            _ => *node = Value::Null,
        }
        None
    }

    fn any_value(&mut self) -> Value {
        let r = &mut self.rng;
        match r.below(8) {
            0 => Value::Null,
            1 => Value::Bool(r.chance(2)),
            2 => Value::from(r.next_u64() >> r.below(64)),
            3 => Value::from(-((r.next_u64() >> 1) as i64)),
            4 => Value::from(r.below(100_000) as f64 / 7.0),
            5 => Value::String(r.pick(UNICODE_EDGES).to_string()),
            6 => Value::Array(vec![]),
            _ => serde_json::json!({}),
        }
    }
}

/// Stands in for a raw token while the document is a `Value`.
const PLACEHOLDER: &str = "\u{1}plaza-fuzz-raw\u{1}";

/// Where each node of `doc` is: a list of steps (object key or array index) per node.
fn node_paths(doc: &Value) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::new(), doc)];
    while let Some((path, node)) = stack.pop() {
        match node {
            Value::Object(map) => {
                for (k, v) in map {
                    let mut p = path.clone();
                    p.push(Step::Key(k.clone()));
                    stack.push((p, v));
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate().take(64) {
                    let mut p = path.clone();
                    p.push(Step::Index(i));
                    stack.push((p, v));
                }
            }
            _ => {}
        }
        out.push(path);
        // Deeply nested inputs would make this quadratic; a sample of nodes is enough.
        if out.len() >= 256 {
            break;
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn node_at<'a>(doc: &'a mut Value, path: &[Step]) -> &'a mut Value {
    let mut node = doc;
    for step in path {
        node = match step {
            Step::Key(k) => &mut node[k.as_str()],
            Step::Index(i) => &mut node[*i],
        };
    }
    node
}

thread_local! {
    /// Set while this thread runs inputs: their panics are caught and reported once, with the
    /// input, instead of each printing a message and a backtrace.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The panic hook is global and tests run in parallel, so it is installed once, and stays
/// silent only on threads that are fuzzing.
fn quiet_panics_while_fuzzing() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                default(info);
            }
        }));
    });
}

/// How a fuzz run went.
#[derive(Debug)]
pub struct Report {
    pub executions: u64,
    pub elapsed: Duration,
}

/// The budget per target: `PLAZA_FUZZ_ITERATIONS`, or `default` (sized for CI).
pub fn iterations(default: u64) -> u64 {
    match std::env::var("PLAZA_FUZZ_ITERATIONS") {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("PLAZA_FUZZ_ITERATIONS={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The seed: `PLAZA_FUZZ_SEED` (to reproduce or vary a run), or a fixed one so CI is
/// deterministic.
pub fn seed() -> u64 {
    std::env::var("PLAZA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00C0_FFEE)
}

/// Runs `check` on every seed and then on `executions` mutated inputs. Each input runs under
/// `catch_unwind`; the first panic fails the run, naming the target, the seed and the
/// iteration, and giving the input in hex (and as text when it is UTF-8).
pub fn run(
    name: &str,
    seeds: &[Vec<u8>],
    mutator: &mut Mutator,
    executions: u64,
    mutate: fn(&mut Mutator, &[u8], &[u8]) -> Vec<u8>,
    check: &dyn Fn(&[u8]),
) -> Report {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let started = Instant::now();
    quiet_panics_while_fuzzing();
    QUIET.set(true);
    let start_state = mutator.rng.clone();
    let mut failure = None;
    let mut done = 0;
    for input in seeds {
        if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| check(input))) {
            failure = Some((input.clone(), e, "a seed".to_string()));
            break;
        }
    }
    if failure.is_none() {
        // Mutations start again from a seed most of the time, and otherwise build on the last
        // input (so several rounds can stack without growing without bound).
        let mut current = seeds[0].clone();
        for i in 0..executions {
            if mutator.rng.chance(4) || current.is_empty() {
                current = mutator.rng.pick(seeds).clone();
            }
            let other = mutator.rng.pick(seeds).clone();
            let input = mutate(mutator, &current, &other);
            if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| check(&input))) {
                failure = Some((input, e, format!("iteration {i}")));
                break;
            }
            current = input;
            done = i + 1;
        }
    }
    QUIET.set(false);
    if let Some((input, e, at)) = failure {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(a panic without a message)".into());
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        let text = std::str::from_utf8(&input)
            .map(|t| format!("\n  as text: {t:?}"))
            .unwrap_or_default();
        panic!(
            "fuzz target {name} failed at {at} (rng state at the start {start_state:?}; rerun with the same \
             PLAZA_FUZZ_SEED and PLAZA_FUZZ_ITERATIONS): {why}\n  input ({} bytes, hex): {hex}{text}",
            input.len()
        );
    }
    let report = Report {
        executions: seeds.len() as u64 + done,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "fuzz target {name}: {} executions clean in {:.1?} ({:.0}/s)",
        report.executions,
        report.elapsed,
        report.executions as f64 / report.elapsed.as_secs_f64().max(1e-9)
    );
    report
}
