//! Hostile request bodies: valid chat and completion requests mutated (keys dropped, values
//! replaced by odd ones of every JSON type, text truncated or bytes flipped) and sent to a
//! running server. Every answer must be a whole HTTP response with 200 or a 4xx and an OpenAI
//! error object, never a 5xx or a dropped connection, and the server must stay healthy.

mod common;

use common::*;
use serde_json::{json, Value};

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn odd_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(-1),
        json!(0),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(""),
        json!("x".repeat(3000)),
        json!("\u{0}\u{FFFD}é日🎉"),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"role": "user"}),
        json!(true),
        json!([[[[[[[]]]]]]]),
        json!([{"role": "tool", "content": [{"type": "image_url"}]}]),
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text"}]}]),
        json!(["a", "b"]),
        json!([5, 6, 1_000_000]),
    ]
}

fn mutate(rng: &mut Rng, base: &Value, odd: &[Value]) -> String {
    let mut v = base.clone();
    let obj = v.as_object_mut().expect("an object");
    let keys: Vec<String> =
        obj.keys().cloned().chain(["n", "stop", "seed", "top_k", "stream_options"].map(String::from)).collect();
    for _ in 0..1 + rng.below(3) {
        let k = &keys[rng.below(keys.len())];
        if rng.below(4) == 0 {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), odd[rng.below(odd.len())].clone());
        }
    }
    let mut text = v.to_string();
    match rng.below(6) {
        0 => text.truncate(rng.below(text.len() + 1)),
        1 if !text.is_empty() => {
            let mut b = text.into_bytes();
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
            text = String::from_utf8_lossy(&b).into_owned();
        }
        _ => {}
    }
    text
}

#[test]
fn mutated_request_bodies_get_200_or_4xx_and_the_server_stays_up() {
    let mut o = options();
    o.max_body = 1 << 14;
    let srv = Server::start(o);
    let a = srv.addr;
    let bases = [
        (
            "/v1/chat/completions",
            json!({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": NAME, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true, "temperature": 0.5, "top_p": 0.9}),
        ),
        ("/v1/completions", json!({"model": NAME, "prompt": "the cat", "max_tokens": 3, "stop": ["x"]})),
        (
            "/v1/completions",
            json!({"model": NAME, "prompt": [1, 2, 3], "max_tokens": 2, "stream": true, "ignore_eos": true}),
        ),
    ];
    let odd = odd_values();
    let mut rng = Rng(7);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..400 {
        let (path, base) = &bases[i % bases.len()];
        let body = mutate(&mut rng, base, &odd);
        let r = request(a, "POST", path, &body);
        match r.status {
            200 => ok += 1,
            400..=499 => {
                let e = r.json();
                assert!(e["error"]["message"].is_string(), "{path} {body:.200}: {}", r.body);
                refused += 1;
            }
            s => panic!("{path} {body:.300}: status {s}: {}", r.body),
        }
    }
    assert!(ok > 20 && refused > 100, "the mutations should both pass and fail validation: {ok} ok, {refused} refused");
    assert_eq!(request(a, "GET", "/health", "").status, 200);
    wait_for("idle", || metric(a, "moe_running_sequences") == 0.0);
}
