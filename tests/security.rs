//! Security (issue 14) against the real `strata serve` binary, with certificates made here
//! (rcgen) and tokens made by `strata token create`:
//!
//! - with `--tokens`: no or an unknown token is `UNAUTHENTICATED`, a missing right
//!   `PERMISSION_DENIED` with nothing applied, health open to anyone, the routing table to any
//!   valid token;
//! - namespaces are disjoint keyspaces: the same key in two namespaces is two entries, and no
//!   get, scan, batch or condition of one shows the other's keys;
//! - `strata token create` prints a token once and appends its hash to a 0600 file; a running
//!   server takes a new token within 5 s of the change and on SIGHUP, and keeps the previous
//!   tokens when the file stops parsing;
//! - TLS (`--tls-cert/--tls-key`), mutual TLS (`--tls-client-ca`), the CLI's `--tls-ca` and
//!   `https://` targets; a plaintext client gets nothing from a TLS server; a certificate
//!   renewed on disk is served to new connections without a restart;
//! - a non-loopback listener without TLS or tokens refuses to start, naming `--allow-insecure`;
//! - quotas: a namespace over its request rate gets `RESOURCE_EXHAUSTED` with
//!   `retry-after-ms`, the other namespace is not refused (its latency is printed);
//! - a cluster over mutual TLS between nodes, with tenants: forwarded requests and
//!   cross-partition batches work, and a client that forges the forwarded header without a
//!   peer certificate is refused.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use strata_client::{Client, ClientOptions};
use strata_compute::pb;
use strata_proto::auth::{Bearer, ClientTls};
use strata_proto::reason;
use strata_testkit::{bin, run_bounded, Server, ServerOpts};
use tonic::Code;

// ---------------------------------------------------------------------------------------
// certificates and tokens

/// A CA, a certificate it signs for `localhost`/127.0.0.1 usable by servers and clients, and
/// a client certificate from another CA (which nothing trusts).
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn leaf(params: rcgen::CertificateParams, key: rcgen::KeyPair) -> (String, String) {
    let issuer = rcgen::Issuer::new(params, key);
    let lk = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&lk, &issuer).unwrap();
    (cert.pem(), lk.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (params, key, ca_pem) = ca("strata test CA");
    let (cert, key) = leaf(params, key);
    let (rparams, rkey, _) = ca("rogue CA");
    let (rcert, rkey) = leaf(rparams, rkey);
    Pki {
        ca: write("ca.pem", &ca_pem),
        cert: write("node.pem", &cert),
        key: write("node.key", &key),
        rogue_cert: write("rogue.pem", &rcert),
        rogue_key: write("rogue.key", &rkey),
        _dir: dir,
    }
}

/// `strata token create`: the token it printed.
fn token_create(file: &Path, namespace: &str, rights: &str) -> String {
    let out = Command::new(bin())
        .args(["token", "create", "--tokens-file"])
        .arg(file)
        .args(["--namespace", namespace, "--rights", rights])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.len() >= 32, "a long random token: {token:?}");
    token
}

async fn client(
    addr: &str,
    token: Option<&str>,
    tls: Option<ClientTls>,
) -> Result<Client, tonic::Status> {
    let opts = ClientOptions {
        token: Bearer::new(token).unwrap(),
        tls,
        retry_budget: Duration::from_secs(5),
        ..Default::default()
    };
    Client::connect_with(&[addr], opts).await
}

fn tls_to(pki: &Pki, with_cert: bool) -> ClientTls {
    ClientTls {
        ca_pem: Some(std::fs::read(&pki.ca).unwrap()),
        identity: with_cert.then(|| {
            (
                std::fs::read(&pki.cert).unwrap(),
                std::fs::read(&pki.key).unwrap(),
            )
        }),
        domain: None,
    }
}

fn reason_of(s: &tonic::Status) -> &str {
    reason::reason_of(s).unwrap_or("")
}

fn put_req(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// The keys of a full scan, as the client sees them.
async fn scan_keys(c: &Client) -> Vec<String> {
    c.scan(pb::ScanRequest::default())
        .await
        .unwrap()
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// Runs the CLI; (success, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(bin());
    c.args(args).env_remove("STRATA_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn serve_with_tokens(dir: &Path, tokens: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--tokens".to_string(), tokens.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start_with(
        dir,
        ServerOpts {
            extra_args: args,
            env: Vec::new(),
        },
    )
}

// ---------------------------------------------------------------------------------------
// tokens, rights, namespaces

#[tokio::test]
async fn tokens_gate_every_call_and_namespaces_are_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let alpha = token_create(&tokens, "alpha", "read,write");
    let alpha_ro = token_create(&tokens, "alpha", "read");
    let beta = token_create(&tokens, "beta", "read,write");
    let server = serve_with_tokens(&dir.path().join("data"), &tokens, &[]);
    let addr = server.addr.clone();

    // No token, or an unknown one: UNAUTHENTICATED, even for the routing table.
    let e = client(&addr, None, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(reason_of(&e), reason::UNAUTHENTICATED);
    let e = client(&addr, Some("strata_not-a-token"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Health is open to anyone.
    let ch = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // A raw KV call without a token is refused before the handler reads it.
    let e = pb::kv_client::KvClient::new(ch)
        .put(put_req("k", "v"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let a = client(&addr, Some(&alpha), None).await.unwrap();
    let ro = client(&addr, Some(&alpha_ro), None).await.unwrap();
    let b = client(&addr, Some(&beta), None).await.unwrap();

    // A read-only token can read (the routing table too) but not write; nothing is applied.
    let e = ro.put("shared", "from-ro").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason_of(&e), reason::PERMISSION_DENIED);
    assert!(e.message().contains("write"), "{}", e.message());
    let e = ro
        .batch_write(pb::BatchWriteRequest {
            ops: vec![pb::WriteOp {
                op: Some(pb::write_op::Op::Put(put_req("shared", "x"))),
            }],
            durability: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(a.get("shared").await.unwrap(), None);

    // The same key in two namespaces is two entries.
    a.put("shared", "alpha's").await.unwrap();
    b.put("shared", "beta's").await.unwrap();
    a.put("a-only", "1").await.unwrap();
    b.put("b-only", "2").await.unwrap();
    assert_eq!(a.get("shared").await.unwrap().unwrap().0, "alpha's");
    assert_eq!(b.get("shared").await.unwrap().unwrap().0, "beta's");
    assert_eq!(ro.get("shared").await.unwrap().unwrap().0, "alpha's");
    assert_eq!(a.get("b-only").await.unwrap(), None);
    assert_eq!(b.get("a-only").await.unwrap(), None);

    // Scans see their own keys only, as the tenant wrote them; ranges and prefixes too.
    assert_eq!(scan_keys(&a).await, vec!["a-only", "shared"]);
    assert_eq!(scan_keys(&b).await, vec!["b-only", "shared"]);
    let r = b
        .scan(pb::ScanRequest {
            start: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"z"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    let r = a
        .scan(pb::ScanRequest {
            prefix: Bytes::from_static(b"b-"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.is_empty(), "alpha sees none of beta's keys: {r:?}");

    // Conditions: beta's if_absent on a key only alpha has succeeds (it is absent in beta).
    b.put_request(pb::PutRequest {
        condition: Some(pb::put_request::Condition::IfAbsent(true)),
        ..put_req("a-only", "beta's own")
    })
    .await
    .unwrap();
    assert_eq!(a.get("a-only").await.unwrap().unwrap().0, "1");

    // Batches stay in their namespace both ways.
    b.batch_write(pb::BatchWriteRequest {
        ops: vec![
            pb::WriteOp {
                op: Some(pb::write_op::Op::Put(put_req("batch-1", "b1"))),
            },
            pb::WriteOp {
                op: Some(pb::write_op::Op::Delete(pb::DeleteRequest {
                    key: Bytes::from_static(b"shared"),
                    ..Default::default()
                })),
            },
        ],
        durability: 0,
    })
    .await
    .unwrap();
    let got = a
        .batch_get(vec![
            Bytes::from_static(b"shared"),
            Bytes::from_static(b"batch-1"),
        ])
        .await
        .unwrap();
    assert!(
        got[0].found && got[0].value == "alpha's" && !got[1].found,
        "{got:?}"
    );

    // A key that would spell another namespace's stored form stays inside the caller's.
    let spelled = Bytes::from_static(b"\xff\xfens/beta/b-only");
    a.put(spelled.clone(), "x").await.unwrap();
    assert_eq!(b.get("b-only").await.unwrap().unwrap().0, "2");
    assert_eq!(a.get(spelled).await.unwrap().unwrap().0, "x");

    // A node alone takes no forwarded request (no peer forwards to it; a tenant's header
    // would pass its requests off as admitted elsewhere).
    let mut raw = pb::kv_client::KvClient::new(transport(&addr, &alpha, None).await);
    let req = forged(pb::GetRequest {
        key: Bytes::from_static(b"\xff\xfens/alpha/shared"),
        ..Default::default()
    });
    let e = raw.get(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("not part of a cluster"),
        "{}",
        e.message()
    );

    // The CLI takes the token from STRATA_TOKEN (never an argument in these docs).
    let (ok, out, err) = cli(
        &["get", "shared", "--target", &addr],
        &[("STRATA_TOKEN", &alpha)],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "alpha's");
    let (ok, _, err) = cli(&["get", "shared", "--target", &addr], &[]);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    // No secret in the server's log.
    for t in [&alpha, &alpha_ro, &beta] {
        assert!(
            !server.log_text().contains(t.as_str()),
            "a token in the log"
        );
    }
}

#[tokio::test]
async fn token_files_are_private_and_reload_on_change_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let first = token_create(&tokens, "alpha", "read,write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the tokens file is private");
    }
    let text = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        !text.contains(&first),
        "the file holds the hash, not the token"
    );
    let server = serve_with_tokens(&dir.path().join("data"), &tokens, &[]);
    let addr = server.addr.clone();

    // A token created while the server runs works within 5 s, without a restart.
    let second = token_create(&tokens, "gamma", "read,write");
    let t0 = Instant::now();
    loop {
        match client(&addr, Some(&second), None).await {
            Ok(c) => {
                c.put("k", "v").await.unwrap();
                break;
            }
            Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                assert_eq!(e.code(), Code::Unauthenticated);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("new token not in force after 5 s: {e:?}"),
        }
    }
    eprintln!("a new token was in force after {:?}", t0.elapsed());

    // A file that does not parse keeps the tokens in force, and the log says why.
    std::fs::write(&tokens, "[[tokens]]\nsha256 = \"not hex\"\n").unwrap();
    let t0 = Instant::now();
    while !server.log_text().contains("previous tokens stay in force") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no log of the bad file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client(&addr, Some(&first), None).await.unwrap();
    assert_eq!(
        c.get("k").await.unwrap(),
        None,
        "alpha does not see gamma's key"
    );

    // SIGHUP re-reads: a file with only gamma's token drops alpha's at once.
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nsha256 = \"{}\"\nnamespace = \"gamma\"\nrights = [\"read\"]\n",
            strata_compute::server::auth::token_hash(&second)
        ),
    )
    .unwrap();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    loop {
        let e = c.get("k").await;
        if matches!(&e, Err(s) if s.code() == Code::Unauthenticated) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "alpha's token still in force: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // gamma is read-only now.
    let g = client(&addr, Some(&second), None).await.unwrap();
    assert_eq!(g.get("k").await.unwrap().unwrap().0, "v");
    assert_eq!(
        g.put("k", "w").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(
        server.log_text().contains("SIGHUP"),
        "the reload on SIGHUP is logged"
    );
}

// ---------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn a_quiet_tls_connection_is_not_taken_for_a_slow_handshake() {
    // The connection timers see the TLS records, not the HTTP/2 preface inside them: a TLS
    // connection whose handshake is done must not be closed by the handshake timeout, and a
    // TLS client that stalls in its handshake still is.
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("tls"),
        ServerOpts {
            extra_args: vec![
                "--tls-cert".into(),
                pki.cert.display().to_string(),
                "--tls-key".into(),
                pki.key.display().to_string(),
                "--handshake-timeout-secs".into(),
                "1".into(),
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
            ],
            env: Vec::new(),
        },
    );
    let c = client(&server.addr, None, Some(tls_to(&pki, false)))
        .await
        .unwrap();
    c.put("k", "v").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        server.metric("strata_connections_handshake_timeouts_total"),
        0,
        "a TLS connection past its handshake was closed as a slow handshake"
    );
    assert_eq!(c.get("k").await.unwrap().unwrap().0, "v");
    // A client that sends the start of a ClientHello and stops is closed.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut s, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closed the stalled TLS handshake");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(
        server.metric("strata_connections_handshake_timeouts_total"),
        1
    );
}

#[tokio::test]
async fn tls_and_mutual_tls_with_certificates_made_here() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    let ca = pki.ca.display().to_string();
    let server = Server::start_with(
        &dir.path().join("tls"),
        ServerOpts {
            extra_args: vec![
                "--tls-cert".into(),
                cert.clone(),
                "--tls-key".into(),
                key.clone(),
            ],
            env: Vec::new(),
        },
    );
    assert!(
        server.log_text().contains("client API on"),
        "{}",
        server.log_text()
    );
    let addr = server.addr.clone();

    // The Rust client over TLS, trusting the test CA.
    let c = client(&addr, None, Some(tls_to(&pki, false)))
        .await
        .unwrap();
    c.put("over-tls", "yes").await.unwrap();
    // The CLI: --tls-ca and an https:// target, or the address with --tls-ca alone.
    let https = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let (ok, out, err) = cli(
        &["get", "over-tls", "--target", &https, "--tls-ca", &ca],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "yes");
    let (ok, out, err) = cli(
        &["get", "over-tls", "--target", &addr, "--tls-ca", &ca],
        &[],
    );
    assert!(ok && out == "yes", "{err}");
    // Without the CA the certificate is not trusted; plaintext gets nothing.
    let (ok, _, err) = cli(
        &[
            "get",
            "over-tls",
            "--target",
            &https,
            "--timeout-ms",
            "3000",
        ],
        &[],
    );
    assert!(!ok, "an untrusted certificate must fail: {err}");
    let (ok, _, _) = cli(
        &["get", "over-tls", "--target", &addr, "--timeout-ms", "3000"],
        &[],
    );
    assert!(
        !ok,
        "a plaintext client must get nothing from a TLS listener"
    );

    // Mutual TLS: a client certificate from the CA is required.
    let server2 = Server::start_with(
        &dir.path().join("mtls"),
        ServerOpts {
            extra_args: vec![
                "--tls-cert".into(),
                cert,
                "--tls-key".into(),
                key,
                "--tls-client-ca".into(),
                ca.clone(),
            ],
            env: Vec::new(),
        },
    );
    let addr2 = server2.addr.clone();
    let c = client(&addr2, None, Some(tls_to(&pki, true)))
        .await
        .unwrap();
    c.put("mtls", "ok").await.unwrap();
    assert!(
        client(&addr2, None, Some(tls_to(&pki, false)))
            .await
            .is_err(),
        "no client certificate"
    );
    let rogue = ClientTls {
        identity: Some((
            std::fs::read(&pki.rogue_cert).unwrap(),
            std::fs::read(&pki.rogue_key).unwrap(),
        )),
        ..tls_to(&pki, false)
    };
    assert!(
        client(&addr2, None, Some(rogue)).await.is_err(),
        "a certificate of another CA"
    );
    let (ok, out, err) = cli(
        &[
            "get",
            "mtls",
            "--target",
            &addr2,
            "--tls-ca",
            &ca,
            "--tls-client-cert",
            &pki.cert.display().to_string(),
            "--tls-client-key",
            &pki.key.display().to_string(),
        ],
        &[],
    );
    assert!(ok && out == "ok", "{err}");
}

/// Waits (up to 10 s) until the server's log holds `times` lines with `text`.
async fn wait_for_log(server: &Server, text: &str, times: usize, what: &str) {
    let t0 = Instant::now();
    while server.log_text().matches(text).count() < times {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: {}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces `path`'s content at once (a rename), as a certificate renewal tool does.
fn replace_file(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    // The listener's certificate and key are replaced on disk: new connections get the new
    // certificate within seconds, the connection already open keeps working, and a file
    // that does not load (garbage, a key that is not the certificate's) keeps the
    // certificate in force.
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert_p, key_p) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    std::fs::copy(&pki.cert, &cert_p).unwrap();
    std::fs::copy(&pki.key, &key_p).unwrap();
    let (params2, cakey2, ca2) = ca("renewed CA");
    let (cert2, key2) = leaf(params2, cakey2);
    let server = Server::start_with(
        &dir.path().join("node"),
        ServerOpts {
            extra_args: vec![
                "--tls-cert".into(),
                cert_p.display().to_string(),
                "--tls-key".into(),
                key_p.display().to_string(),
            ],
            env: Vec::new(),
        },
    );
    let trusting = |ca_pem: &[u8]| ClientTls {
        ca_pem: Some(ca_pem.to_vec()),
        identity: None,
        domain: None,
    };
    let ca1 = std::fs::read(&pki.ca).unwrap();
    let open = client(&server.addr, None, Some(trusting(&ca1)))
        .await
        .unwrap();
    open.put("before", "1").await.unwrap();

    // Garbage in the certificate file: logged, the first certificate stays in force.
    replace_file(&cert_p, b"not a certificate");
    wait_for_log(
        &server,
        "TLS files not reloaded",
        1,
        "the bad file was not noticed",
    )
    .await;
    let c = client(&server.addr, None, Some(trusting(&ca1)))
        .await
        .unwrap();
    c.put("still-first", "1").await.unwrap();
    // A valid certificate whose key is still the old one's: refused as well.
    replace_file(&cert_p, cert2.as_bytes());
    wait_for_log(
        &server,
        "TLS files not reloaded",
        2,
        "the mismatched key was not noticed",
    )
    .await;
    assert!(
        server.log_text().contains("certificate and key"),
        "the error says what is wrong: {}",
        server.log_text()
    );
    let c = client(&server.addr, None, Some(trusting(&ca1)))
        .await
        .unwrap();
    c.put("mismatched", "1").await.unwrap();

    // Its key too: new connections now get the renewed certificate.
    replace_file(&key_p, key2.as_bytes());
    let t0 = Instant::now();
    let renewed = loop {
        match client(&server.addr, None, Some(trusting(ca2.as_bytes()))).await {
            Ok(c) => break c,
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the renewed certificate is not served: {e}; {}",
                server.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    renewed.put("after", "2").await.unwrap();
    wait_for_log(&server, "TLS files re-read", 1, "the reload was not logged").await;
    assert!(
        client(&server.addr, None, Some(trusting(&ca1)))
            .await
            .is_err(),
        "a new connection still got the first certificate"
    );
    // The connection made before the renewal keeps its session.
    assert_eq!(open.get("after").await.unwrap().unwrap().0, "2");
}

#[test]
fn a_non_loopback_listener_without_tls_or_tokens_refuses_to_start_as_do_shared_cas() {
    let dir = tempfile::tempdir().unwrap();
    // The check runs before the listener binds: nothing listens on a public address here.
    let out = Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-insecure"), "{err}");
    assert!(
        err.contains("without TLS") && err.contains("without tokens"),
        "{err}"
    );
    assert!(!dir.path().join("objects").exists(), "nothing was started");

    // Peers must have a CA of their own: a client's certificate never passes for a peer's.
    let pki = pki();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .arg("--tls-client-ca")
        .arg(&pki.ca)
        .arg("--peer-tls-ca")
        .arg(&pki.ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("share a certificate"), "{err}");
    assert!(!dir.path().join("objects").exists(), "nothing was started");
}

// ---------------------------------------------------------------------------------------
// quotas

#[tokio::test]
async fn a_namespace_over_its_rate_is_refused_with_retry_after_and_the_other_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let hot = token_create(&tokens, "hot", "read,write");
    let calm = token_create(&tokens, "calm", "read,write");
    append(
        &tokens,
        b"\n[namespaces.hot]\nrequests_per_sec = 50\nwrite_bytes_per_sec = 65536\n",
    );
    let server = serve_with_tokens(&dir.path().join("data"), &tokens, &[]);
    let h = client(&server.addr, Some(&hot), None).await.unwrap();
    let c = client(&server.addr, Some(&calm), None).await.unwrap();

    // calm's latency alone, then while hot floods past its quota.
    async fn p99(c: &Client, n: usize) -> Duration {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            c.put(format!("calm-{i}"), "v").await.unwrap();
            lat.push(t.elapsed());
        }
        lat.sort();
        lat[n * 99 / 100]
    }
    let alone = p99(&c, 200).await;
    let flood = {
        let h = h.clone();
        tokio::spawn(async move {
            let (mut ok, mut refused, mut retry_after) = (0u32, 0u32, None);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                let futs = (0..16).map(|i| h.put(format!("hot-{i}"), vec![7u8; 1024]));
                for r in futures::future::join_all(futs).await {
                    match r {
                        Ok(_) => ok += 1,
                        Err(s) => {
                            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                            assert_eq!(reason_of(&s), reason::QUOTA_EXCEEDED);
                            retry_after = s
                                .metadata()
                                .get("retry-after-ms")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            assert!(retry_after.is_some(), "retry-after-ms metadata");
                            refused += 1;
                        }
                    }
                }
            }
            (ok, refused, retry_after)
        })
    };
    let during = p99(&c, 200).await;
    let (ok, refused, retry_after) = flood.await.unwrap();
    eprintln!(
        "quota: hot admitted {ok}, refused {refused} (retry-after-ms {retry_after:?}) in 3 s; \
         calm put p99 alone {alone:?}, during hot's flood {during:?}"
    );
    assert!(refused > 0, "the hot namespace was never refused");
    // 50 requests/s for ~3 s (plus one second's burst); a bound with slack for slow machines.
    assert!(ok <= 50 * 5, "hot admitted {ok} requests at 50/s");
}

// ---------------------------------------------------------------------------------------
// export

/// `namespace\tKEY\tvalue` rows of an export, read by DuckDB (`KEY` is the SQL expression
/// `key_sql` of the key).
fn duckdb_rows(dir: &Path, key_sql: &str) -> Vec<String> {
    let script = format!(
        "import duckdb\n\
         for r in duckdb.sql(\"select coalesce(namespace, '-'), {key_sql}, decode(value) \
         from read_parquet('{}/*.parquet') order by 1, 2\").fetchall():\n    print('\\t'.join(r))\n",
        dir.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn an_export_of_one_namespace_shows_its_keys_as_its_tenant_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let alpha = token_create(&tokens, "alpha", "read,write");
    let beta = token_create(&tokens, "beta", "read,write");
    let data = dir.path().join("data");
    let server = serve_with_tokens(&data, &tokens, &[]);
    let a = client(&server.addr, Some(&alpha), None).await.unwrap();
    let b = client(&server.addr, Some(&beta), None).await.unwrap();
    a.put("k1", "a1").await.unwrap();
    a.put("k2", "a2").await.unwrap();
    b.put("k1", "b1").await.unwrap();

    let export = |to: &Path, ns: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["export", "--no-progress", "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(format!("file://{}", to.display()));
        if let Some(ns) = ns {
            c.args(["--namespace", ns]);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let one = dir.path().join("alpha-export");
    export(&one, Some("alpha"));
    assert_eq!(
        duckdb_rows(&one, "decode(key)"),
        vec!["alpha\tk1\ta1", "alpha\tk2\ta2"]
    );
    // Everything: keys as stored (sorted, unique), each row naming its namespace; the
    // tenant's key is what follows the prefix.
    let all = dir.path().join("all-export");
    export(&all, None);
    let rows = duckdb_rows(&all, "hex(key)");
    let hex = |s: &str| -> String { s.bytes().map(|b| format!("{b:02X}")).collect() };
    let want: Vec<String> = [
        ("alpha", "k1", "a1"),
        ("alpha", "k2", "a2"),
        ("beta", "k1", "b1"),
    ]
    .iter()
    .map(|(ns, k, v)| format!("{ns}\tFFFE{}\t{v}", hex(&format!("ns/{ns}/{k}"))))
    .collect();
    assert_eq!(rows, want);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(m["namespace"], "alpha");
}

// ---------------------------------------------------------------------------------------
// a cluster

/// A KV client straight to one node (no routing: the node forwards what it does not own).
/// Appends `text` to the tokens file at `path` (quotas for a namespace).
fn append(path: &Path, text: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, text).unwrap();
}

/// `msg` as a request that claims a peer forwarded it (for partition 0).
fn forged<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        strata_proto::headers::FORWARDED_PARTITION,
        tonic::metadata::MetadataValue::from(0u32),
    );
    req
}

/// A connection to `addr` (over TLS with `tls`) whose calls carry `token`.
async fn transport(
    addr: &str,
    token: &str,
    tls: Option<&ClientTls>,
) -> strata_proto::auth::Transport {
    let ch = strata_proto::auth::endpoint(addr, tls, Duration::from_secs(5))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::service::interceptor::InterceptedService::new(ch, Bearer::new(Some(token)).unwrap())
}

async fn raw_kv(
    addr: &str,
    token: &str,
    tls: &ClientTls,
) -> pb::kv_client::KvClient<strata_proto::auth::Transport> {
    pb::kv_client::KvClient::new(transport(addr, token, Some(tls)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_with_tenants_forwards_and_refuses_forged_peer_calls() {
    let Some((s3, etcd)) = strata_testkit::cluster::infra() else {
        return;
    };
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let alpha = token_create(&tokens, "alpha", "read,write");
    let beta = token_create(&tokens, "beta", "read,write");
    let (cert, key, ca, tok) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        pki.ca.display().to_string(),
        tokens.display().to_string(),
    );
    let args = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--peer-tls-ca",
        &ca,
        "--tokens",
        &tok,
        "--partitions",
        "4",
    ];
    let cluster = strata_testkit::Cluster::start_with_args(&s3, &etcd, 2, "security-tls", &args);
    let addrs: Vec<String> = (0..2).map(|i| cluster.node(i).addr.clone()).collect();
    let tls = tls_to(&pki, false);

    // Until both nodes own partitions, writes may be refused as moving: retry briefly.
    let mut n0 = raw_kv(&addrs[0], &alpha, &tls).await;
    let t0 = Instant::now();
    let mut written = Vec::new();
    for i in 0..24 {
        let k = format!("key-{i:02}");
        loop {
            match n0.put(put_req(&k, &format!("v{i}"))).await {
                Ok(_) => break,
                Err(e)
                    if t0.elapsed() < Duration::from_secs(30) && e.code() == Code::Unavailable =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("put {k} through node 0: {e:?}"),
            }
        }
        written.push(k);
    }
    // Every key reads back through the other node (forwarded over mutual TLS for the
    // partitions it does not own), and through the routing client.
    let mut n1 = raw_kv(&addrs[1], &alpha, &tls).await;
    for (i, k) in written.iter().enumerate() {
        let r = n1
            .get(pb::GetRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.found && r.value == format!("v{i}"), "{k}: {r:?}");
    }
    let routed = client(&addrs[1], Some(&alpha), Some(tls.clone()))
        .await
        .unwrap();
    assert!(routed.partitions() > 1);
    assert_eq!(routed.get("key-03").await.unwrap().unwrap().0, "v3");
    // A batch spanning partitions commits as a transaction between the nodes.
    let ops = (0..8)
        .map(|i| pb::WriteOp {
            op: Some(pb::write_op::Op::Put(put_req(&format!("txn-{i}"), "t"))),
        })
        .collect();
    n0.batch_write(pb::BatchWriteRequest { ops, durability: 0 })
        .await
        .unwrap();
    // Another tenant sees none of it, in a scan merged over both nodes.
    let b = client(&addrs[0], Some(&beta), Some(tls.clone()))
        .await
        .unwrap();
    assert!(scan_keys(&b).await.is_empty());
    let keys = scan_keys(&routed).await;
    assert_eq!(keys.len(), 24 + 8, "{keys:?}");
    assert!(keys
        .iter()
        .all(|k| k.starts_with("key-") || k.starts_with("txn-")));

    // A client that forges the forwarded header has no peer certificate: refused.
    let req = forged(pb::GetRequest {
        key: Bytes::from_static(b"\xff\xfens/beta/anything"),
        ..Default::default()
    });
    let e = n0.get(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("--peer-tls-ca"), "{}", e.message());
    // So does a direct call of the node-to-node transaction service.
    let mut txn = pb::txn_client::TxnClient::new(transport(&addrs[0], &alpha, Some(&tls)).await);
    let e = txn
        .resolve(pb::TxnResolveRequest {
            txn_id: "x".into(),
            partition: 0,
            commit: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Even a verified peer's Prepare writes only inside the namespace of the token it passes
    // on: a peer certificate is no key to every tenant's data.
    let peer = tls_to(&pki, true);
    let mut peer_txn =
        pb::txn_client::TxnClient::new(transport(&addrs[0], &alpha, Some(&peer)).await);
    let stolen = pb::PutRequest {
        key: Bytes::from_static(b"\xff\xfens/beta/stolen"),
        ..put_req("placeholder", "x")
    };
    let req = forged(pb::TxnPrepareRequest {
        txn_id: "forged".into(),
        partition: 0,
        ops: vec![pb::WriteOp {
            op: Some(pb::write_op::Op::Put(stolen)),
        }],
        created_ms: 0,
    });
    let e = peer_txn.prepare(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("outside namespace"), "{}", e.message());
    eprintln!(
        "cluster over mutual TLS: {} partitions, {} keys read back through the other node",
        routed.partitions(),
        written.len()
    );
}

#[tokio::test]
async fn a_namespace_over_its_read_bytes_waits_and_the_other_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let hot = token_create(&tokens, "hot", "read,write");
    let calm = token_create(&tokens, "calm", "read,write");
    append(
        &tokens,
        b"\n[namespaces.hot]\nread_bytes_per_sec = 200000\n",
    );
    let server = serve_with_tokens(&dir.path().join("data"), &tokens, &[]);
    let mut h = pb::kv_client::KvClient::new(transport(&server.addr, &hot, None).await);
    let mut c = pb::kv_client::KvClient::new(transport(&server.addr, &calm, None).await);
    let big = "x".repeat(150_000);
    for kv in [&mut h, &mut c] {
        kv.put(put_req("big", &big)).await.unwrap();
    }
    let get = || pb::GetRequest {
        key: Bytes::from_static(b"big"),
        ..Default::default()
    };
    // 150 KB a read against 200 KB/s: the second read puts hot in debt, the third waits.
    let mut refused = None;
    for _ in 0..4 {
        match h.get(get()).await {
            Ok(r) => assert_eq!(r.into_inner().value.len(), big.len()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("hot's reads are refused once in debt");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(reason_of(&e), reason::QUOTA_EXCEEDED);
    assert!(
        e.message().contains("read_bytes_per_sec"),
        "{}",
        e.message()
    );
    assert!(e
        .metadata()
        .get(strata_proto::headers::RETRY_AFTER_MS)
        .is_some());
    // Its writes and the other tenant are not held back.
    h.put(put_req("small", "s")).await.unwrap();
    for _ in 0..5 {
        let r = c.get(get()).await.unwrap().into_inner();
        assert_eq!(r.value.len(), big.len());
    }
    // Once the debt is paid, hot reads again.
    let t0 = Instant::now();
    loop {
        match h.get(get()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(t0.elapsed() < Duration::from_secs(10), "still refused");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_namespace_at_its_stored_bytes_refuses_puts_and_still_takes_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let small = token_create(&tokens, "small", "read,write");
    let other = token_create(&tokens, "other", "read,write");
    append(&tokens, b"\n[namespaces.small]\nstored_bytes = 40000\n");
    let server = serve_with_tokens(
        &dir.path().join("data"),
        &tokens,
        &["--usage-interval-secs", "1"],
    );
    let s = client(&server.addr, Some(&small), None).await.unwrap();
    let o = client(&server.addr, Some(&other), None).await.unwrap();
    // Writes pass until the meter sees the namespace at its quota, then are refused.
    let t0 = Instant::now();
    let mut i = 0;
    let refused = loop {
        match s.put(format!("k{i}"), vec![1u8; 10_000]).await {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never refused after {i} puts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason_of(&refused), reason::QUOTA_EXCEEDED);
    assert!(
        refused.message().contains("stored_bytes"),
        "{}",
        refused.message()
    );
    assert!(i >= 4, "{i} puts of 10 KB before a 40 KB quota refused");
    // The other namespace is not limited; deletes bring the small one back under.
    o.put("big", vec![2u8; 100_000]).await.unwrap();
    for j in 0..i {
        s.delete(format!("k{j}")).await.unwrap();
    }
    let t0 = Instant::now();
    while s.put("again", "v").await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still refused after the deletes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_in_flight_share_holds_a_scan_until_its_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let t = token_create(&tokens, "scanner", "read,write");
    let server = serve_with_tokens(
        &dir.path().join("data"),
        &tokens,
        &["--tenant-max-in-flight", "2"],
    );
    let c = client(&server.addr, Some(&t), None).await.unwrap();
    for chunk in 0..4 {
        let ops = (0..1000)
            .map(|i| pb::WriteOp {
                // 4 MB in all: more than HTTP/2's flow-control windows hold, so a scan
                // nobody reads stays open on the server.
                op: Some(pb::write_op::Op::Put(put_req(
                    &format!("k{chunk}-{i:04}"),
                    &"v".repeat(1024),
                ))),
            })
            .collect();
        c.batch_write(pb::BatchWriteRequest { ops, durability: 0 })
            .await
            .unwrap();
    }
    let mut kv = pb::kv_client::KvClient::new(transport(&server.addr, &t, None).await);
    // Two scans read one chunk each and stay open: they hold the namespace's two slots.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut st = kv
            .scan(pb::ScanRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(!st.message().await.unwrap().unwrap().entries.is_empty());
        open.push(st);
    }
    let e = kv
        .get(pb::GetRequest {
            key: Bytes::from_static(b"k0-0001"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.metadata().get("retry-after-ms").is_some());
    // Once the streams end, the slots are free again.
    drop(open);
    let t0 = Instant::now();
    loop {
        match kv
            .get(pb::GetRequest {
                key: Bytes::from_static(b"k0-0001"),
                ..Default::default()
            })
            .await
        {
            Ok(r) => {
                assert!(r.into_inner().found);
                break;
            }
            Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slots not freed after the scans ended: {e:?}"),
        }
    }
}

#[tokio::test]
async fn the_default_namespace_reserves_the_tenants_range_for_puts_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = client(&server.addr, None, None).await.unwrap();
    let k = Bytes::from_static(b"\xff\xfens/alpha/k");
    let e = c.put(k.clone(), "v").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&e), reason::RESERVED_KEY);
    // Reads and deletes of such keys (left from a store once served with tokens) still work.
    assert_eq!(c.get(k.clone()).await.unwrap(), None);
    c.delete(k).await.unwrap();
    // In a cluster, tenants need peer certificates: refused before anything starts.
    let tokens = dir.path().join("tokens.toml");
    token_create(&tokens, "a", "read");
    let out = Command::new(bin())
        .args(["serve", "--etcd", "http://127.0.0.1:1", "--tokens"])
        .arg(&tokens)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--peer-tls-ca") && err.contains("--allow-insecure"),
        "{err}"
    );
}

#[tokio::test]
async fn a_namespace_holds_at_most_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let a = token_create(&tokens, "a", "read,write");
    let b = token_create(&tokens, "b", "read,write");
    let server = serve_with_tokens(
        &dir.path().join("data"),
        &tokens,
        &[
            "--tenant-max-connections",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let get = || pb::GetRequest {
        key: Bytes::from_static(b"k"),
        ..Default::default()
    };
    let conn = |t: String| {
        let addr = server.addr.clone();
        async move { pb::kv_client::KvClient::new(transport(&addr, &t, None).await) }
    };
    // Two connections of namespace a are its share; a third is refused, b's are not.
    let mut a1 = conn(a.clone()).await;
    let mut a2 = conn(a.clone()).await;
    a1.get(get()).await.unwrap();
    a2.get(get()).await.unwrap();
    let mut a3 = conn(a.clone()).await;
    let e = a3.get(get()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("connections"), "{}", e.message());
    let mut b1 = conn(b.clone()).await;
    b1.get(get()).await.unwrap();
    // The refused connection is closed a moment later (it holds no descriptor of the node's);
    // the bound ones stay open.
    let t0 = Instant::now();
    while server.metric("strata_connections_over_share_closed_total") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the connection over the share was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.metric("strata_connections_over_share_closed_total"),
        1
    );
    // Requests on a bound connection keep working; closing one frees a place, which a3
    // (reconnecting as it retries) gets.
    a1.get(get()).await.unwrap();
    a2.get(get()).await.unwrap();
    drop(a1);
    let t0 = Instant::now();
    while let Err(e) = a3.get(get()).await {
        assert!(
            matches!(e.code(), Code::ResourceExhausted | Code::Unavailable),
            "{e:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no place after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// etcd over TLS with a user

/// An etcd that only speaks TLS, requires client certificates signed by `pki.ca`, and has
/// auth enabled with user `root` / `password`; killed on drop.
struct SecureEtcd {
    child: std::process::Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SecureEtcd {
    /// `etcdctl` against it with the client certificate, as `user` when given.
    fn etcdctl(&self, pki: &Pki, user: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout", "5s"])
            .arg("--cacert")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key);
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        c.args(args).output().expect("run etcdctl")
    }

    fn start(pki: &Pki, password: &str) -> SecureEtcd {
        let dir = tempfile::tempdir().unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client, peer) = (port(), port());
        // JWT tokens, as etcd recommends for production: each carries the auth revision it was
        // issued at, so any change to users or roles makes it stale.
        let jwt = rcgen::KeyPair::generate().unwrap();
        let (jwt_priv, jwt_pub) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
        std::fs::write(&jwt_priv, jwt.serialize_pem()).unwrap();
        std::fs::write(&jwt_pub, jwt.public_key_pem()).unwrap();
        let auth_token = format!(
            "jwt,pub-key={},priv-key={},sign-method=ES256",
            jwt_pub.display(),
            jwt_priv.display()
        );
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "secure", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("secure={peer_url}")])
            .arg("--cert-file")
            .arg(&pki.cert)
            .arg("--key-file")
            .arg(&pki.key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            .args(["--auth-token", &auth_token])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd is installed (bash infra/setup.sh)");
        let etcd = SecureEtcd {
            child,
            endpoint,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !etcd
            .etcdctl(pki, None, &["endpoint", "health"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "the TLS etcd never became healthy"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for args in [
            vec![
                "user".to_string(),
                "add".into(),
                "root".into(),
                format!("--new-user-password={password}"),
            ],
            vec!["auth".into(), "enable".into()],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = etcd.etcdctl(pki, None, &args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        etcd
    }
}

/// `strata ctl status` against `etcd` with `extra` flags, bounded: (succeeded, stdout+stderr).
fn ctl_status(etcd: &SecureEtcd, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new(bin());
    c.args(["ctl", "--etcd", &etcd.endpoint, "--etcd-prefix", "/secure"])
        .args(extra)
        .arg("status")
        .env_remove("STRATA_ETCD_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(&mut c, Duration::from_secs(30))
}

/// A node and the CLI reach an etcd that requires TLS with client certificates and a user:
/// `--etcd-ca`, `--etcd-cert/--etcd-key`, `--etcd-user` with `--etcd-password-file` or
/// `STRATA_ETCD_PASSWORD`. Without the CA, without the client certificate, with a wrong
/// password or without a user the CLI fails with a clear error instead of hanging, and the
/// password never appears in what it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_etcd_over_mutual_tls_as_a_user() {
    let pki = pki();
    let password = "etcd-secret-7f3a";
    let etcd = SecureEtcd::start(&pki, password);
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("etcd-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let (ca, cert, key, pw) = (
        pki.ca.display().to_string(),
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        pw_file.display().to_string(),
    );
    let tls = ["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key];
    let objects = format!("file://{}", dir.path().join("objects").display());
    let mut args: Vec<String> = [
        "--etcd",
        &etcd.endpoint,
        "--etcd-prefix",
        "/secure",
        "--object-store",
        &objects,
        "--node-id",
        "n1",
        "--partitions",
        "2",
        "--etcd-user",
        "root",
        "--etcd-password-file",
        &pw,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(tls.iter().map(|s| s.to_string()));
    let node = Server::start_with(
        &dir.path().join("node"),
        ServerOpts {
            extra_args: args,
            ..Default::default()
        },
    );
    let mut c = node.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.put(put_req("secure-key", "v1")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no write through the node: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let got = c
        .get(pb::GetRequest {
            key: Bytes::from_static(b"secure-key"),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found && got.value == Bytes::from_static(b"v1"));
    assert!(
        !node.log_text().contains(password),
        "the node logged the password"
    );

    // A change to etcd's users makes every token older than it stale ("revision of auth
    // store is old"); the node takes a new one and goes on publishing its stats.
    let root = format!("root:{password}");
    let stats_rev = |etcd: &SecureEtcd| -> (i64, i64) {
        let out = etcd.etcdctl(
            &pki,
            Some(&root),
            &["get", "/secure/stats/n1", "-w", "json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let header = v["header"]["revision"].as_i64().unwrap();
        let modified = v["kvs"][0]["mod_revision"].as_i64().unwrap_or(0);
        (header, modified)
    };
    let out = etcd.etcdctl(
        &pki,
        Some(&root),
        &["user", "add", "other", "--new-user-password=other-pw"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (changed_at, _) = stats_rev(&etcd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats_rev(&etcd).1 <= changed_at {
        assert!(
            Instant::now() < deadline,
            "the node stopped writing to etcd after its users changed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The CLI, with the password from the environment: sees the node.
    let with_user = [&tls[..], &["--etcd-user", "root"]].concat();
    let (ok, out) = ctl_status(&etcd, &with_user, &[("STRATA_ETCD_PASSWORD", password)]);
    assert!(ok && out.contains("n1"), "{out}");
    assert!(!out.contains(password));
    // A wrong password, no user, no CA, no client certificate: each fails, saying why.
    let (ok, out) = ctl_status(&etcd, &with_user, &[("STRATA_ETCD_PASSWORD", "wrong")]);
    assert!(!ok, "a wrong password was accepted: {out}");
    assert!(
        out.contains("authentication failed") || out.contains("invalid"),
        "{out}"
    );
    let (ok, out) = ctl_status(&etcd, &tls, &[]);
    assert!(!ok, "no user was accepted: {out}");
    let (ok, out) = ctl_status(&etcd, &["--etcd-user", "root"], &[]);
    assert!(!ok && out.contains("STRATA_ETCD_PASSWORD"), "{out}");
    let no_ca = [
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
        "--etcd-user",
        "root",
    ];
    let (ok, out) = ctl_status(&etcd, &no_ca, &[("STRATA_ETCD_PASSWORD", password)]);
    assert!(!ok, "etcd's certificate was trusted without its CA: {out}");
    let no_cert = ["--etcd-ca", &ca, "--etcd-user", "root"];
    let (ok, out) = ctl_status(&etcd, &no_cert, &[("STRATA_ETCD_PASSWORD", password)]);
    assert!(!ok, "etcd took a client without a certificate: {out}");
    let (ok, out) = ctl_status(&etcd, &["--etcd-ca", "/nonexistent/ca.pem"], &[]);
    assert!(!ok && out.contains("--etcd-ca"), "{out}");
}
