//! A small HTTP/1.1 client with a kept-alive connection, for the benchmark: it talks to the
//! public API exactly as any client would, without pulling a client library into the binary.
//! It speaks only what rota's API answers (`Content-Length` bodies, JSON).

use anyhow::{Context, bail};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One connection to the API, reopened when the server closes it.
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// `Authorization: Bearer` of every request, from `ROTA_TOKEN`, for an API with tokens.
    authorization: String,
}

impl Client {
    /// A client of the API at `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Self {
        let authorization = std::env::var("ROTA_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
            .unwrap_or_default();
        Self {
            addr,
            conn: None,
            authorization,
        }
    }

    /// Sends a request and returns the status and the JSON body (`Null` when empty or not JSON).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Value)> {
        // A kept-alive connection the server closed fails on first use: try once more afresh.
        match self.try_request(method, path, body).await {
            Ok(answer) => Ok(answer),
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, body).await
            }
        }
    }

    /// GET `path`, expecting 200.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.request("GET", path, None).await?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}: {body}");
        }
        Ok(body)
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Value)> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("cannot connect to the API at {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             {}Content-Length: {}\r\n\r\n",
            self.addr,
            self.authorization,
            body.len()
        );
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("the API closed the connection");
        }
        let status: u16 = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().context("bad Content-Length")?;
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("unexpected Transfer-Encoding {value} from the API");
                }
            }
        }
        let mut payload = vec![0; length];
        conn.read_exact(&mut payload).await?;
        if close {
            self.conn = None;
        }
        Ok((
            status,
            serde_json::from_slice(&payload).unwrap_or(Value::Null),
        ))
    }
}
