//! The API's security as a user meets it, over real HTTP against the `rota` binary:
//!
//! - every route x {no token, a wrong token, each scope} answers as `routes()` (and
//!   `docs/security.md`) say, on `rota dev` and on production (`rota api` on ZooKeeper with
//!   digest credentials and PostgreSQL), with tokens made by `rota admin token create`;
//! - known secrets (the tokens, the PostgreSQL and ZooKeeper passwords, the webhook secret)
//!   appear in no log line, no response (`/cluster` and `/metrics` included) and no error;
//! - `rota api` and `rota dev` refuse to serve without tokens off loopback, naming the opt-out;
//! - half-sent headers are cut off at `api.header_read_timeout_ms`, a short body gets a 408;
//! - a token over its rate limit gets a 429 with `Retry-After`;
//! - HTTPS with a certificate generated here, refusing plain HTTP and untrusting clients.

mod common;

use common::{Env, Proc, wait_for};
use rota::api::auth::Access;
use rota::api::routes;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PG_PASSWORD: &str = "known-pg-password-5f1c";
const ZK_PASSWORD: &str = "known-zk-password-9a2e";
const HTTP_SECRET: &str = "known-webhook-secret-77d0b3";

/// A token and the `[[api.tokens]]` entry `rota admin token create` printed for it, in the
/// inline form of `ROTA_API__TOKENS`.
struct Made {
    token: String,
    entry: String,
}

fn make_token(name: &str, scopes: &str) -> Made {
    let mut create = Command::new(env!("CARGO_BIN_EXE_rota"));
    create
        .args(["admin", "token", "create", "--name", name])
        .args(["--scopes", scopes]);
    let text = rota_test_harness::output_of(&mut create, "rota admin token create");
    let token = text.lines().next().unwrap().to_owned();
    assert!(
        token.starts_with("rota_"),
        "the token is not alone on the first line:\n{text}"
    );
    assert!(text.contains("[[api.tokens]]"), "{text}");
    // The environment form, `# ROTA_API__TOKENS='[{...}]'`: the entry between the brackets.
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# ROTA_API__TOKENS='["))
        .unwrap_or_else(|| panic!("no environment form in:\n{text}"));
    let entry = line.strip_suffix("]'").unwrap().to_owned();
    assert_eq!(
        text.matches(&token).count(),
        1,
        "the token is printed more than once"
    );
    Made { token, entry }
}

/// The callers of the matrix: no token, a wrong one, and one per scope.
struct Callers {
    read: Made,
    write: Made,
    admin: Made,
    limited: Made,
}

impl Callers {
    fn new() -> Self {
        Callers {
            read: make_token("reader", "read"),
            write: make_token("writer", "write"),
            admin: make_token("operator", "admin"),
            limited: make_token("limited", "read"),
        }
    }

    /// `ROTA_API__TOKENS`, the `limited` token at 5 requests per second.
    fn env(&self) -> String {
        let limited = self
            .limited
            .entry
            .replace('}', ", rate_limit_per_second=5}");
        format!(
            "[{}, {}, {}, {limited}]",
            self.read.entry, self.write.entry, self.admin.entry
        )
    }

    fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> = [&self.read, &self.write, &self.admin, &self.limited]
            .iter()
            .map(|m| m.token.clone())
            .collect();
        all.extend([PG_PASSWORD, ZK_PASSWORD, HTTP_SECRET].map(str::to_owned));
        all
    }
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, reqwest::header::HeaderMap) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap_or_default(), headers)
}

/// Waits until the API at `base` is ready.
async fn ready(client: &reqwest::Client, base: &str) {
    wait_for("a ready API", Duration::from_secs(60), || async {
        let answer = client.get(format!("{base}/readyz")).send().await;
        answer.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// What an admin reads of the cluster (`/cluster`, `/metrics`), each checked to be served.
async fn admin_views(client: &reqwest::Client, base: &str, callers: &Callers) -> Vec<String> {
    let mut views = Vec::new();
    for path in ["/cluster", "/metrics"] {
        let admin = Some(callers.admin.token.as_str());
        let (status, text, _) = send(client, base, "get", path, admin, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        views.push(text);
    }
    views
}

/// Runs the matrix against the API at `base`; every response body, for the secrets search.
async fn matrix(client: &reqwest::Client, base: &str, callers: &Callers) -> Vec<String> {
    let mut seen = Vec::new();
    let task = json!({"name": "matrix", "payload": {"n": 1}});
    // A task to read and cancel.
    let admin = Some(callers.admin.token.as_str());
    let (status, body, _) = send(client, base, "post", "/tasks", admin, Some(&task)).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].clone();
    let wrong = format!("rota_{}", "0".repeat(64));
    let who: [(&str, Option<&str>, &[&str]); 5] = [
        ("no token", None, &[]),
        ("a wrong token", Some(&wrong), &[]),
        ("read", Some(&callers.read.token), &["read"]),
        ("write", Some(&callers.write.token), &["write"]),
        (
            "admin",
            Some(&callers.admin.token),
            &["read", "write", "admin"],
        ),
    ];
    let mut checked = 0;
    for &rota::api::Route {
        method,
        path: route,
        access,
    } in routes()
    {
        let path = route
            .replace("{id}", &id.to_string())
            .replace("{name}", "nightly");
        let schedule = json!({"name": "nightly", "every": "1h", "task": {"name": "nightly"}});
        let body = match (method, route) {
            ("post", "/tasks") => Some(task.clone()),
            ("post", "/tasks/batch") => Some(json!({"tasks": [task.clone()]})),
            ("post", "/schedules") | ("put", "/schedules/{name}") => Some(schedule),
            ("put", "/cluster/maintenance") => Some(json!({"on": false})),
            _ => None,
        };
        for (caller, token, scopes) in &who {
            let needed = match access {
                Access::Open => None,
                Access::Metrics => Some("read"),
                Access::Needs(scope) => Some(scope.name()),
            };
            let (status, text, headers) =
                send(client, base, method, &path, *token, body.as_ref()).await;
            let what = format!("{method} {route} with {caller}: {status} {text}");
            let expected = match needed {
                None => None,
                Some(_) if token.is_none() || *caller == "a wrong token" => Some(401),
                Some(scope) if !scopes.contains(&scope) => Some(403),
                Some(_) => None,
            };
            match expected {
                Some(refusal) => {
                    assert_eq!(status, refusal, "{what}");
                    let error: Value = serde_json::from_str(&text).expect("a JSON error");
                    let code = if refusal == 401 {
                        "unauthorized"
                    } else {
                        "forbidden"
                    };
                    assert_eq!(error["error"], code, "{what}");
                    assert!(error["message"].is_string(), "{what}");
                    if refusal == 401 {
                        assert!(headers.contains_key("www-authenticate"), "{what}");
                    }
                }
                None => assert!(
                    status < 400 || [404, 409].contains(&status),
                    "{what} should be served"
                ),
            }
            seen.push(text);
            checked += 1;
        }
    }
    assert_eq!(checked, routes().len() * 5);
    seen
}

/// The rate limit: 5 per second for the `limited` token, 429s past it, with `Retry-After`.
async fn rate_limited(client: &reqwest::Client, base: &str, callers: &Callers) {
    let mut refused = 0;
    for _ in 0..30 {
        let limited = Some(callers.limited.token.as_str());
        let (status, text, headers) = send(client, base, "get", "/tasks", limited, None).await;
        if status == 429 {
            refused += 1;
            assert_eq!(headers["retry-after"], "1");
            let error: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(error["error"], "rate_limited", "{text}");
            assert!(!text.contains(&callers.limited.token));
        } else {
            assert_eq!(status, 200, "{text}");
        }
    }
    assert!(
        refused >= 20,
        "only {refused} of 30 quick requests were limited"
    );
    // Others are not held back by one token's limit.
    let reader = Some(callers.read.token.as_str());
    let (status, _, _) = send(client, base, "get", "/tasks", reader, None).await;
    assert_eq!(status, 200);
}

/// A connection that sends half its headers is closed by the server near the deadline; one
/// that promises more body than it sends gets a 408.
fn slow_clients_are_cut_off(addr: SocketAddr, token: &str) {
    let mut half = std::net::TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: rota\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = half.read_to_end(&mut buf);
    let took = start.elapsed();
    assert!(read.is_ok(), "the connection was not closed: {read:?}");
    assert!(
        took < Duration::from_secs(5),
        "half-sent headers held the connection for {took:?}"
    );

    let mut short = std::net::TcpStream::connect(addr).unwrap();
    // With a token: without one the request is refused (401) before its body is read.
    let head = format!(
        "POST /tasks HTTP/1.1\r\nHost: rota\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"name\""
    );
    short.write_all(head.as_bytes()).unwrap();
    short
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 1024];
    let n = short
        .read(&mut answer)
        .expect("an answer within the request timeout");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

/// Every file of this test process's logs, and the given outputs, must hold none of `secrets`.
fn assert_no_secrets(secrets: &[String], outputs: &[String], logs: &[&Path]) {
    let mut searched = 0;
    for path in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{} holds a secret ({}...)",
                path.display(),
                &secret[..8]
            );
        }
        searched += text.len();
    }
    for output in outputs {
        for secret in secrets {
            assert!(
                !output.contains(secret.as_str()),
                "an output holds a secret ({}...): {output}",
                &secret[..8]
            );
        }
        searched += output.len();
    }
    // The processes logged at debug level: a search of next to nothing would prove nothing.
    assert!(
        searched > 20_000,
        "only {searched} bytes of output to search"
    );
    println!("searched {searched} bytes for {} secrets", secrets.len());
}

fn free_addr(ip: &str) -> SocketAddr {
    format!("{ip}:{}", rota_test_harness::free_port())
        .parse()
        .unwrap()
}

fn dev_command(listen: SocketAddr, data: &Path, log: &Path) -> Command {
    let file = std::fs::File::create(log).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rota"));
    c.args(["dev", "--listen", &listen.to_string(), "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "debug,hyper=info,h2=info,sqlx=info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    c
}

fn temp(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("rota-sec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_dev_every_route_answers_each_token_as_documented_and_no_secret_leaks() {
    let callers = Callers::new();
    let api = free_addr("127.0.0.1");
    let log = temp("dev.log");
    let _dev = Proc(
        dev_command(api, &temp("dev-data"), &log)
            .env("ROTA_API__TOKENS", callers.env())
            .env("ROTA_HTTP__SECRET", HTTP_SECRET)
            .env("ROTA_API__HEADER_READ_TIMEOUT_MS", "500")
            .env("ROTA_API__REQUEST_TIMEOUT_MS", "1000")
            .spawn()
            .expect("start rota dev"),
    );
    let client = reqwest::Client::new();
    let base = format!("http://{api}");
    ready(&client, &base).await;
    let mut outputs = matrix(&client, &base, &callers).await;
    rate_limited(&client, &base, &callers).await;
    slow_clients_are_cut_off(api, &callers.write.token);
    outputs.extend(admin_views(&client, &base, &callers).await);
    assert_no_secrets(&callers.secrets(), &outputs, &[&log]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_production_every_route_answers_each_token_as_documented_and_no_secret_leaks() {
    let callers = Callers::new();
    let db = rota_test_harness::postgres().fresh_database().replacen(
        "postgres://rota@",
        &format!("postgres://rota:{PG_PASSWORD}@"),
        1,
    );
    let mut env = Env::on_zookeeper("security", "sec", db);
    env.vars.extend(
        [
            ("ROTA_API__TOKENS", callers.env()),
            ("ROTA_HTTP__SECRET", HTTP_SECRET.to_owned()),
            ("ROTA_COORDINATION__USERNAME", "rota".to_owned()),
            ("ROTA_COORDINATION__PASSWORD", ZK_PASSWORD.to_owned()),
            ("RUST_LOG", "debug,hyper=info,h2=info,sqlx=info".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let debug = |mut c: Command| {
        c.env("RUST_LOG", "debug,hyper=info,h2=info,sqlx=info");
        c
    };
    let init = debug(env.command(&["init"], None)).status().unwrap();
    assert!(init.success());
    let _roles = [
        Proc(debug(env.command(&["controller"], None)).spawn().unwrap()),
        Proc(debug(env.command(&["worker"], Some("w1"))).spawn().unwrap()),
        Proc(debug(env.command(&["api"], None)).spawn().unwrap()),
    ];
    let client = reqwest::Client::new();
    let base = format!("http://{}", env.api);
    ready(&client, &base).await;
    let mut outputs = matrix(&client, &base, &callers).await;
    outputs.extend(admin_views(&client, &base, &callers).await);
    // The CLI and the errors a user meets: the status, and a store that cannot be reached.
    let status = env
        .command(&["admin", "status"], None)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(status.status.success());
    outputs.push(String::from_utf8_lossy(&status.stdout).into_owned());
    let unreachable = env
        .command(&["init"], None)
        .env(
            "ROTA_STORAGE__URL",
            format!("postgres://rota:{PG_PASSWORD}@127.0.0.1:1/nowhere"),
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    let error = String::from_utf8_lossy(&unreachable.stderr).into_owned();
    assert!(error.contains("127.0.0.1:1"), "{error}");
    outputs.push(error);
    // Every process's log (the harness names them after this test process and the tag).
    let logs: Vec<std::path::PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("rota-mp-{}-security-", std::process::id()))
        })
        .collect();
    assert!(
        logs.len() >= 4,
        "expected the logs of every role, found {logs:?}"
    );
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    assert_no_secrets(&callers.secrets(), &outputs, &logs);
}

#[test]
fn without_tokens_the_api_refuses_to_serve_off_loopback_unless_told_to() {
    let data = temp("exposed");
    for args in [
        vec!["api"],
        vec!["dev", "--data-dir", data.to_str().unwrap()],
    ] {
        let listen = free_addr("0.0.0.0");
        let out = Command::new(env!("CARGO_BIN_EXE_rota"))
            .args(&args)
            .args(if args[0] == "dev" {
                vec!["--listen".to_owned(), listen.to_string()]
            } else {
                vec![]
            })
            .env("ROTA_API__LISTEN", listen.to_string())
            .env("ROTA_COORDINATION__BACKEND", "zookeeper")
            .env("ROTA_COORDINATION__ENDPOINTS", "127.0.0.1:1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "rota {args:?} served on {listen} without tokens"
        );
        assert!(
            error.contains("without tokens") && error.contains("api.allow_unauthenticated"),
            "rota {args:?}: {error}"
        );
    }
    // Told to, it serves.
    let listen = free_addr("0.0.0.0");
    let log = temp("exposed.log");
    let _dev = Proc(
        dev_command(listen, &data, &log)
            .env("ROTA_API__ALLOW_UNAUTHENTICATED", "true")
            .spawn()
            .unwrap(),
    );
    let local: SocketAddr = format!("127.0.0.1:{}", listen.port()).parse().unwrap();
    let start = Instant::now();
    // Served, not only accepted: a route that needs a token elsewhere answers, without one.
    let answer = loop {
        let asked = std::net::TcpStream::connect(local).and_then(|mut conn| {
            use std::io::{Read, Write};
            conn.write_all(b"GET /tasks HTTP/1.1\r\nHost: rota\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer)?;
            Ok(answer)
        });
        match asked {
            Ok(answer) if !answer.is_empty() => break answer,
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "rota dev did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"tasks\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_its_certificate_and_refuses_plain_http() {
    let pki = rota_test_harness::tls::Pki::generate(&temp("pki"));
    let api = free_addr("127.0.0.1");
    let log = temp("https.log");
    let _dev = Proc(
        dev_command(api, &temp("https-data"), &log)
            .env(
                "ROTA_API__TLS",
                format!(
                    "{{cert=\"{}\", key=\"{}\"}}",
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
            )
            .spawn()
            .unwrap(),
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", api.port());
    ready(&trusting, &base).await;
    let created = trusting
        .post(format!("{base}/tasks"))
        .header("content-type", "application/json")
        .body(json!({"name": "over-tls", "payload": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // By IP address too (the certificate names 127.0.0.1).
    let by_ip = trusting
        .get(format!("https://{api}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_ip.status(), 200);
    // A client that does not trust the authority, and one speaking plain HTTP, get nothing.
    let untrusting = reqwest::Client::new();
    assert!(
        untrusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{api}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP was served"
    );
    let banner = std::fs::read_to_string(&log).unwrap();
    assert!(banner.contains(&format!("https://{api}")), "{banner}");
}

#[test]
fn a_token_with_an_unknown_scope_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args([
            "admin",
            "token",
            "create",
            "--name",
            "ci",
            "--scopes",
            "read,delete",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "a token was printed");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("read, write and admin"), "{error}");
}

#[test]
fn the_security_document_lists_every_route_with_its_scope() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md"),
    )
    .unwrap();
    for &rota::api::Route {
        method,
        path,
        access,
    } in routes()
    {
        let scope = match access {
            Access::Open => "open",
            Access::Metrics => "read (open with api.open_metrics)",
            Access::Needs(scope) => scope.name(),
        };
        let row = format!("| `{} {path}` | {scope} |", method.to_uppercase());
        assert!(doc.contains(&row), "docs/security.md lacks the row {row}");
    }
}

/// The configuration reaches the stores: `rota init` and `rota admin status` on an etcd that
/// serves only TLS to clients with certificates (`coordination.tls`) and a PostgreSQL that takes
/// only TLS (`sslmode=verify-full`); without the settings, each is refused with a message.
#[test]
fn the_roles_reach_etcd_and_postgres_over_tls_as_configured() {
    let pki = rota_test_harness::tls::Pki::generate(&temp("store-pki"));
    let etcd = rota_test_harness::tls_etcd(&pki);
    let postgres = rota_test_harness::tls_postgres(&pki);
    let db = postgres.fresh_database();
    let verified = format!("{db}?sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let tls = format!(
        "{{ca=\"{}\", cert=\"{}\", key=\"{}\"}}",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let rota = |args: &[&str], url: &str, tls: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rota"));
        c.args(args)
            .env("ROTA_COORDINATION__BACKEND", "etcd")
            .env("ROTA_COORDINATION__ENDPOINTS", etcd.endpoint())
            .env("ROTA_COORDINATION__SESSION_TIMEOUT_MS", "3000")
            .env("ROTA_STORAGE__BACKEND", "postgres")
            .env("ROTA_STORAGE__URL", url)
            .env("ROTA_CLUSTER__NAME", "tls")
            .env("RUST_LOG", "warn");
        if let Some(tls) = tls {
            c.env("ROTA_COORDINATION__TLS", tls);
        }
        c.output().unwrap()
    };
    // etcd may still be starting behind its open port: retry init with a deadline.
    let start = Instant::now();
    loop {
        let out = rota(&["init"], &verified, Some(&tls));
        if out.status.success() {
            break;
        }
        let error = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rota init over TLS: {error}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = rota(&["admin", "status"], &verified, Some(&tls));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["partitions"].as_array().unwrap().len(),
        12,
        "{status}"
    );
    // Without the coordination TLS settings: refused, and said so.
    let plain = rota(&["admin", "status"], &verified, None);
    assert!(!plain.status.success());
    let error = String::from_utf8_lossy(&plain.stderr);
    assert!(error.contains("coordination store"), "{error}");
    // PostgreSQL without TLS: refused by the server, and said so.
    let plain = rota(&["init"], &format!("{db}?sslmode=disable"), Some(&tls));
    assert!(!plain.status.success());
    let error = String::from_utf8_lossy(&plain.stderr);
    assert!(error.contains("cannot connect to PostgreSQL"), "{error}");
}
