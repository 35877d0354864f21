//! A `moe serve` on a free loopback port and a minimal HTTP/1.1 client, shared by this crate's
//! tests. Every loop here is bounded.
#![allow(dead_code)] // each test file uses a part

use moe_engine::tokenizer::Tokenizer;
use moe_infer::generate::eos_ids;
use moe_infer::Model;
use moe_serve::ServeOptions;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const NAME: &str = "tiny";

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../moe-infer/tests/fixtures/qwen3_moe")
}

pub fn options() -> ServeOptions {
    ServeOptions {
        name: NAME.into(),
        parallel: 8,
        ctx: 64,
        prefill_chunk: 16,
        kv_bytes: None,
        max_queue: 64,
        api_key: None,
        max_body: 1 << 16,
    }
}

/// A server on a free loopback port, stopped (and joined) on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn start(o: ServeOptions) -> Server {
        Self::start_on(&fixture(), o)
    }

    pub fn start_on(dir: &Path, o: ServeOptions) -> Server {
        let tok = if dir.is_file() {
            moe_infer::gguf_tokenizer::load(dir)
        } else {
            Tokenizer::open(dir).map_err(moe_infer::Error::from)
        };
        let (model, tok) = (Model::load(dir).unwrap(), tok.unwrap());
        let eos = eos_ids(dir, &model, &tok);
        let router = moe_serve::app(model, tok, eos, o).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            rt.block_on(moe_serve::serve(listener, router, async {
                let _ = rx.await;
            }))
        });
        Server { addr, stop: Some(tx), thread: Some(thread) }
    }

    pub fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().map_or(Ok(()), |t| t.join().expect("server thread"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// An HTTP/1.1 answer: status, headers (lower-case names), body (de-chunked).
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The JSON payloads of a server-sent event stream, up to `[DONE]` (which must end it).
    pub fn events(&self) -> Vec<Value> {
        let data: Vec<&str> = self.body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "the stream ends with [DONE]: {}", self.body);
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect()
    }
}

pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("content-type: application/json\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

pub fn read_answer(s: TcpStream) -> Answer {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status =
        line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = vec![];
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = vec![];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Answer { status, headers, body: String::from_utf8(body).unwrap() }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    read_answer(send(addr, method, path, &[], body.as_bytes()))
}

pub fn post(addr: SocketAddr, path: &str, body: Value) -> Answer {
    request(addr, "POST", path, &body.to_string())
}

/// One Prometheus value from GET /metrics.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let a = request(addr, "GET", "/metrics", "");
    let line =
        a.body.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name} missing"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Polls until `cond` holds (at most 30 s).
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
