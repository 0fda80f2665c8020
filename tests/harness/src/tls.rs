//! Certificates for TLS tests, generated per test run: a certificate authority, a server
//! certificate for `localhost` and `127.0.0.1`, and a client certificate, each signed by the
//! authority, written as PEM files; and a second, unrelated authority, for a client that trusts
//! the wrong one.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};

/// PEM files of one generated public-key infrastructure.
pub struct Pki {
    /// The authority's certificate (what clients and servers trust).
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// The client's certificate (common name `rota`).
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
    /// An authority that signed none of these.
    pub other_ca: PathBuf,
}

fn authority(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("a CA certificate");
    (Issuer::new(params, key), cert.pem())
}

impl Pki {
    /// Generates the files in `dir` (created if missing).
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("a directory for the certificates");
        let (issuer, ca_pem) = authority("rota test CA");
        let (_, other_pem) = authority("some other CA");
        let leaf = |names: Vec<String>, common: &str| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("parameters");
            params.distinguished_name.push(DnType::CommonName, common);
            let cert = params.signed_by(&key, &issuer).expect("a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_pem, client_key) = leaf(Vec::new(), "rota");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other_pem),
        }
    }
}
