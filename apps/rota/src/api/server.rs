//! The API's accept loop: HTTP/1.1 on hyper, optionally inside TLS (rustls), with a deadline on
//! each connection's TLS handshake and request headers, so a client that opens a connection and
//! sends nothing, or half a header, is cut off instead of held for minutes. (A body slower than
//! its `Content-Length` promises falls under the router's request timeout, a 408.) Each request
//! carries its peer's address (`ConnectInfo`) for the rate limit. On shutdown the loop stops
//! accepting and lets requests in flight finish.

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How connections are accepted.
#[derive(Clone)]
pub struct Listening {
    /// A client has this long to finish its TLS handshake, then each request's headers.
    pub header_read_timeout: Duration,
    /// HTTPS, or plain HTTP without it.
    pub tls: Option<TlsAcceptor>,
}

impl Listening {
    /// Plain HTTP with a header deadline.
    pub fn plain(header_read_timeout: Duration) -> Self {
        Self {
            header_read_timeout,
            tls: None,
        }
    }

    /// As the `[api]` section says (reading the certificate and key, if any).
    pub fn from_config(api: &crate::config::ApiConfig) -> anyhow::Result<Self> {
        let tls = match &api.tls {
            Some(files) => Some(acceptor(&files.cert, &files.key)?),
            None => None,
        };
        Ok(Self {
            header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
            tls,
        })
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// A TLS acceptor for the PEM certificate chain at `cert` and key at `key`.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "the key {} does not fit the certificate {}",
                key.display(),
                cert.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` becomes true, then waits for requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    listening: Listening,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(listening.header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: wait, then go on accepting.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // The guard the wait returns is not `Send`: drop it at once.
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let http = http.clone();
        let watcher = graceful.watcher();
        let listening = listening.clone();
        tokio::spawn(async move {
            match listening.tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
                Some(tls) => {
                    let handshake =
                        tokio::time::timeout(listening.header_read_timeout, tls.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The address a server on `listen` with `listening` is reached at, for messages.
pub fn url(listening: &Listening, addr: SocketAddr) -> String {
    format!("{}://{addr}", listening.scheme())
}
