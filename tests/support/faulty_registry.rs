//! A real HTTP server in front of a real registry that can be told to misbehave on schema
//! lookups (GET): answer 5xx, 429 or 401, a 404 that is not Confluent's JSON, answer slowly,
//! or drop the connection. Writes (POST, registrations) pass unless told otherwise
//! ([`FaultyRegistry::set_writes`]), so stages can register their contracts and only the
//! per-record lookups see the fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How lookups are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// An HTTP status with a body and content type.
    Status {
        status: u16,
        body: String,
        content_type: &'static str,
    },
    /// Forwarded after this long.
    Slow(Duration),
    /// The connection is closed without an answer.
    Drop,
}

impl Fault {
    /// A Confluent-style JSON error.
    pub fn confluent(status: u16, error_code: u32) -> Self {
        Fault::Status {
            status,
            body: format!(r#"{{"error_code":{error_code},"message":"injected fault"}}"#),
            content_type: "application/vnd.schemaregistry.v1+json",
        }
    }

    /// A plain HTML page, as a proxy or load balancer answers.
    pub fn html(status: u16) -> Self {
        Fault::Status { status, body: "<html><body>not here</body></html>".to_owned(), content_type: "text/html" }
    }
}

struct Shared {
    upstream: String,
    fault: Mutex<Fault>,
    write_fault: Mutex<Fault>,
    faulted: AtomicU64,
    lookups: AtomicU64,
    /// Lookups being answered now, and the most there ever were at once.
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

/// The proxy; dropped, it stops serving.
pub struct FaultyRegistry {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyRegistry {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            fault: Mutex::new(Fault::Pass),
            write_fault: Mutex::new(Fault::Pass),
            faulted: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        });
        let serving = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let client = streamscore_contracts::http::client();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (shared, client) = (Arc::clone(&serving), client.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &shared, &client).await;
                });
            }
        });
        Self { url, shared, task }
    }

    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// How writes (registrations, config, deletes) are answered: a start-up that registers
    /// contracts sees this fault.
    pub fn set_writes(&self, fault: Fault) {
        *self.shared.write_fault.lock().unwrap() = fault;
    }

    /// Lookups answered with a fault so far.
    pub fn faulted(&self) -> u64 {
        self.shared.faulted.load(Ordering::Relaxed)
    }

    /// The most lookups that were being answered at the same time.
    pub fn most_in_flight(&self) -> u64 {
        self.shared.most_in_flight.load(Ordering::Relaxed)
    }

    /// Lookups seen so far (faulted or not).
    pub fn lookups(&self) -> u64 {
        self.shared.lookups.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more lookups have been faulted (the stage retried), or panics.
    pub async fn wait_faulted(&self, more: u64, timeout: Duration) {
        let target = self.faulted() + more;
        let started = std::time::Instant::now();
        while self.faulted() < target {
            assert!(started.elapsed() < timeout, "no retried lookup within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FaultyRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, shared: &Shared, client: &reqwest::Client) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) =
        (request_line.next().unwrap_or("GET").to_owned(), request_line.next().unwrap_or("/").to_owned());
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[header_end..].to_vec();

    let fault = if method == "GET" {
        shared.lookups.fetch_add(1, Ordering::Relaxed);
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.most_in_flight.fetch_max(now, Ordering::AcqRel);
        shared.fault.lock().unwrap().clone()
    } else {
        shared.write_fault.lock().unwrap().clone()
    };
    let result = answer(&mut stream, shared, client, fault, &method, &path, body).await;
    if method == "GET" {
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
    result
}

async fn answer(
    stream: &mut TcpStream,
    shared: &Shared,
    client: &reqwest::Client,
    fault: Fault,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> std::io::Result<()> {
    if fault != Fault::Pass {
        shared.faulted.fetch_add(1, Ordering::Relaxed);
    }
    let (status, content_type, answer) = match fault {
        Fault::Drop => return stream.shutdown().await,
        Fault::Status { status, body, content_type } => (status, content_type.to_owned(), body.into_bytes()),
        Fault::Slow(wait) => {
            tokio::time::sleep(wait).await;
            forward(shared, client, method, path, body).await
        }
        Fault::Pass => forward(shared, client, method, path, body).await,
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&answer).await?;
    stream.shutdown().await
}

async fn forward(
    shared: &Shared,
    client: &reqwest::Client,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let url = format!("{}{path}", shared.upstream);
    let request = match method {
        "POST" => client.post(&url),
        "PUT" => client.put(&url),
        "DELETE" => client.delete(&url),
        _ => client.get(&url),
    };
    match request.header("content-type", "application/vnd.schemaregistry.v1+json").body(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            (status, content_type, response.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
        }
        Err(e) => (502, "text/plain".to_owned(), e.to_string().into_bytes()),
    }
}
