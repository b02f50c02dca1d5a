//! Human CLI client: `strata get|put|delete|scan`.
//!
//! Keys and values are UTF-8 text on the command line, or hex with `--hex`.
//! Values go to stdout; versions and "(not found)" go to stderr so that
//! `strata get k > file` captures only the value.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use strata_compute::pb;
use strata_compute::pb::kv_client::KvClient;
use strata_proto::auth::{Bearer, ClientTls};
use tonic::transport::Endpoint;

/// A channel whose requests carry the bearer token, if any.
pub type Transport = strata_proto::auth::Transport;

/// Default server address, overridable by `--target` or `STRATA_TARGET`.
pub const DEFAULT_TARGET: &str = "127.0.0.1:50051";

/// Largest message the client accepts or sends (values are at most 1 MiB, but
/// batches and scan chunks hold many).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Options shared by every client subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Server address, HOST:PORT or a full http(s):// URI.
    #[arg(long, env = "STRATA_TARGET", default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Treat KEY, VALUE and scan bounds as hex, and print keys and values as hex.
    #[arg(long)]
    pub hex: bool,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub auth: crate::security::ClientAuthArgs,
}

/// What a client connection presents: its token and TLS settings.
#[derive(Clone, Debug, Default)]
pub struct Creds {
    /// The bearer token sent with every request.
    pub bearer: Bearer,
    /// TLS settings (`None`: TLS only for https:// targets, with the system's CAs).
    pub tls: Option<ClientTls>,
}

impl crate::security::ClientAuthArgs {
    /// The credentials these flags name.
    pub fn creds(&self) -> anyhow::Result<Creds> {
        let token = self.token()?;
        Ok(Creds {
            bearer: Bearer::new(token.as_deref()).map_err(|e| anyhow!("--token: {e}"))?,
            tls: self.tls()?,
        })
    }
}

/// Read consistency as a command-line value.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyArg {
    /// Linearizable, served by the partition owner.
    Strong,
    /// Any node, bounded staleness.
    Eventual,
}

impl ConsistencyArg {
    /// The protobuf enum value.
    pub fn to_pb(self) -> i32 {
        match self {
            ConsistencyArg::Strong => pb::Consistency::Strong as i32,
            ConsistencyArg::Eventual => pb::Consistency::Eventual as i32,
        }
    }
}

/// Client subcommands, flattened into the top-level `strata` command.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Read one key: prints the value on stdout and `version=N` on stderr.
    Get {
        /// Key (UTF-8, or hex with --hex).
        key: String,
        /// Read consistency.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Strong)]
        consistency: ConsistencyArg,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Write one key: prints `version=N`.
    Put {
        /// Key (UTF-8, or hex with --hex).
        key: String,
        /// Value (UTF-8, or hex with --hex).
        value: String,
        /// Time to live in milliseconds (0 = never expires).
        #[arg(long, default_value_t = 0)]
        ttl_ms: u64,
        /// Only write if the key is absent (or expired).
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// Only write if the key currently has exactly this version.
        #[arg(long)]
        if_version: Option<u64>,
        /// Acknowledge once applied in memory, before the WAL is durable.
        #[arg(long)]
        buffered: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete one key: prints `found=BOOL version=N`.
    Delete {
        /// Key (UTF-8, or hex with --hex).
        key: String,
        /// Only delete if the key currently has exactly this version.
        #[arg(long)]
        if_version: Option<u64>,
        /// Acknowledge once applied in memory, before the WAL is durable.
        #[arg(long)]
        buffered: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List entries in key order: one `key<TAB>value<TAB>version` line each.
    Scan {
        /// Inclusive lower bound (default: unbounded).
        #[arg(long)]
        start: Option<String>,
        /// Exclusive upper bound (default: unbounded).
        #[arg(long)]
        end: Option<String>,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Maximum number of entries (0 = no limit).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Read consistency.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Strong)]
        consistency: ConsistencyArg,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Runs one client subcommand.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Get {
            key,
            consistency,
            conn,
        } => {
            let key = parse_arg(&key, conn.hex, "KEY")?;
            let mut client = connect_client(&conn).await?;
            let resp = client
                .get(pb::GetRequest {
                    key,
                    consistency: consistency.to_pb(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if !resp.found {
                eprintln!("(not found)");
                // Exit code 1 without anyhow's "Error:" decoration.
                std::process::exit(1);
            }
            let mut out = std::io::stdout().lock();
            if conn.hex {
                writeln!(out, "{}", to_hex(&resp.value)).context("writing value to stdout")?;
            } else {
                out.write_all(&resp.value)
                    .and_then(|()| out.write_all(b"\n"))
                    .context("writing value to stdout")?;
            }
            out.flush().context("flushing stdout")?;
            eprintln!("version={}", resp.version);
        }
        ClientCommand::Put {
            key,
            value,
            ttl_ms,
            if_absent,
            if_version,
            buffered,
            conn,
        } => {
            let key = parse_arg(&key, conn.hex, "KEY")?;
            let value = parse_arg(&value, conn.hex, "VALUE")?;
            let condition = match (if_absent, if_version) {
                (true, _) => Some(pb::put_request::Condition::IfAbsent(true)),
                (false, Some(v)) => Some(pb::put_request::Condition::IfVersion(v)),
                (false, None) => None,
            };
            let mut client = connect_client(&conn).await?;
            let resp = client
                .put(pb::PutRequest {
                    key,
                    value,
                    ttl_ms,
                    condition,
                    durability: durability_pb(buffered),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("version={}", resp.version);
        }
        ClientCommand::Delete {
            key,
            if_version,
            buffered,
            conn,
        } => {
            let key = parse_arg(&key, conn.hex, "KEY")?;
            let mut client = connect_client(&conn).await?;
            let resp = client
                .delete(pb::DeleteRequest {
                    key,
                    if_version,
                    durability: durability_pb(buffered),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("found={} version={}", resp.found, resp.version);
        }
        ClientCommand::Scan {
            start,
            end,
            prefix,
            limit,
            consistency,
            conn,
        } => {
            let opt = |s: Option<String>, what: &str| -> anyhow::Result<Bytes> {
                match s {
                    Some(s) => parse_arg(&s, conn.hex, what),
                    None => Ok(Bytes::new()),
                }
            };
            let req = pb::ScanRequest {
                start: opt(start, "--start")?,
                end: opt(end, "--end")?,
                prefix: opt(prefix, "--prefix")?,
                limit,
                consistency: consistency.to_pb(),
            };
            let mut client = connect_client(&conn).await?;
            let mut stream = client.scan(req).await.map_err(status_error)?.into_inner();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                for kv in chunk.entries {
                    let (k, v) = if conn.hex {
                        (to_hex(&kv.key), to_hex(&kv.value))
                    } else {
                        (escape_bytes(&kv.key), escape_bytes(&kv.value))
                    };
                    writeln!(out, "{k}\t{v}\t{}", kv.version).context("writing to stdout")?;
                }
            }
            out.flush().context("flushing stdout")?;
        }
    }
    Ok(())
}

fn durability_pb(buffered: bool) -> i32 {
    if buffered {
        pb::Durability::Buffered as i32
    } else {
        pb::Durability::Durable as i32
    }
}

/// Turns a gRPC status into an error whose message leads with the code name,
/// e.g. `FailedPrecondition: version mismatch`.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let msg = status.message();
    if msg.is_empty() {
        anyhow!("{}", code_name(status.code()))
    } else {
        anyhow!("{}: {}", code_name(status.code()), msg)
    }
}

/// The gRPC code as a CamelCase name (`FailedPrecondition`, `Unavailable`, ...).
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Builds an endpoint for `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT` (TLS also
/// whenever `tls` is given).
pub fn endpoint(
    target: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> anyhow::Result<Endpoint> {
    if target.contains("://") && !target.starts_with("http://") && !target.starts_with("https://") {
        bail!(
            "invalid target {target:?} (expected HOST:PORT, http://HOST:PORT or https://HOST:PORT)"
        );
    }
    let ep = strata_proto::auth::endpoint(target, tls, Duration::from_secs(5))
        .map_err(|e| anyhow!("--target: {e}"))?
        .timeout(timeout)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20));
    Ok(ep)
}

/// Connects one channel to `target`, presenting `creds`.
pub async fn connect(target: &str, timeout: Duration, creds: &Creds) -> anyhow::Result<Transport> {
    let ch = endpoint(target, timeout, creds.tls.as_ref())?
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch,
        creds.bearer.clone(),
    ))
}

/// Wraps a channel in a KV client with generous message limits.
pub fn kv_client(channel: Transport) -> KvClient<Transport> {
    KvClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

async fn connect_client(conn: &ConnArgs) -> anyhow::Result<KvClient<Transport>> {
    let creds = conn.auth.creds()?;
    let channel = connect(&conn.target, Duration::from_millis(conn.timeout_ms), &creds).await?;
    Ok(kv_client(channel))
}

/// Parses a command-line key/value: UTF-8 as is, or hex when `hex` is set.
fn parse_arg(s: &str, hex: bool, what: &str) -> anyhow::Result<Bytes> {
    if hex {
        from_hex(s)
            .map(Bytes::from)
            .with_context(|| format!("{what} is not valid hex: {s:?}"))
    } else {
        Ok(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// Lower-case hex encoding.
pub fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 0xf)] as char);
    }
    s
}

/// Decodes hex (either case, optional `0x` prefix).
pub fn from_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits ({})", s.len());
    }
    fn nibble(c: u8, pos: usize) -> anyhow::Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => bail!("invalid hex digit {:?} at offset {pos}", c as char),
        }
    }
    s.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| Ok(nibble(pair[0], 2 * i)? << 4 | nibble(pair[1], 2 * i + 1)?))
        .collect()
}

/// Renders bytes for a terminal: printable UTF-8 as is, `\` as `\\`, and
/// control characters and invalid UTF-8 as `\xNN` escapes.
pub fn escape_bytes(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{byte:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    #[test]
    fn hex_round_trip() {
        let data: Vec<u8> = (0..=255).collect();
        let h = to_hex(&data);
        assert_eq!(&h[..6], "000102");
        assert_eq!(from_hex(&h).expect("valid hex"), data);
        assert_eq!(from_hex("0xABcd").expect("valid hex"), vec![0xab, 0xcd]);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert_eq!(from_hex("").expect("empty"), Vec::<u8>::new());
    }

    #[test]
    fn escapes_non_printable() {
        assert_eq!(escape_bytes(b"plain key"), "plain key");
        assert_eq!(escape_bytes(b"a\tb\nc"), "a\\x09b\\x0ac");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape_bytes(&[0xff, b'x', 0x00]), "\\xffx\\x00");
        assert_eq!(escape_bytes("héllo".as_bytes()), "héllo");
    }

    #[test]
    fn endpoint_accepts_host_port_and_uri() {
        let t = Duration::from_secs(1);
        assert!(endpoint("127.0.0.1:50051", t, None).is_ok());
        assert!(endpoint("http://localhost:1", t, None).is_ok());
        assert!(endpoint("https://localhost:1", t, None).is_ok());
        assert!(endpoint("ftp://localhost:1", t, None).is_err());
        assert!(endpoint("not a uri at all", t, None).is_err());
    }

    #[test]
    fn status_error_leads_with_code() {
        let e = status_error(tonic::Status::failed_precondition("version is 3"));
        assert_eq!(e.to_string(), "FailedPrecondition: version is 3");
    }

    #[test]
    fn parses_put_flags() {
        let cli = TestCli::try_parse_from([
            "t",
            "put",
            "k",
            "v",
            "--if-version",
            "7",
            "--buffered",
            "--target",
            "h:1",
        ])
        .expect("parses");
        match cli.cmd {
            ClientCommand::Put {
                if_version,
                if_absent,
                buffered,
                conn,
                ..
            } => {
                assert_eq!(if_version, Some(7));
                assert!(!if_absent);
                assert!(buffered);
                assert_eq!(conn.target, "h:1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(TestCli::try_parse_from([
            "t",
            "put",
            "k",
            "v",
            "--if-absent",
            "--if-version",
            "1"
        ])
        .is_err());
    }
}
