//! The etcd connection flags of every command that reaches a cluster's etcd (`serve`,
//! `compactor`, `cluster`, `export`): TLS (the CAs to trust, a client certificate for etcd's
//! `--client-cert-auth`) and etcd's user and password (etcd's `auth enable`). A password is
//! never a command-line argument (it would show in `ps`): it comes from a file or from
//! `STRATA_ETCD_PASSWORD`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_manifest::{EtcdSettings, EtcdTls, EtcdUser};

/// Environment variable holding etcd's password (instead of `--etcd-password-file`).
const PASSWORD_ENV: &str = "STRATA_ETCD_PASSWORD";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdAuthArgs {
    /// CA certificates (PEM) that sign etcd's server certificate, for `https://` etcd URLs
    /// (without it: the system's roots).
    #[arg(long, env = "STRATA_ETCD_CA", value_name = "FILE", global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for an etcd that requires one (`--client-cert-auth`);
    /// with `--etcd-key`.
    #[arg(long, env = "STRATA_ETCD_CERT", value_name = "FILE", global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of `--etcd-cert`.
    #[arg(long, env = "STRATA_ETCD_KEY", value_name = "FILE", global = true)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd with `auth enable`); the password from `--etcd-password-file` or the
    /// environment variable STRATA_ETCD_PASSWORD.
    #[arg(long, env = "STRATA_ETCD_USER", global = true)]
    pub etcd_user: Option<String>,
    /// File holding the password of `--etcd-user` (one line; wins over STRATA_ETCD_PASSWORD).
    #[arg(
        long,
        env = "STRATA_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        global = true
    )]
    pub etcd_password_file: Option<PathBuf>,
}

/// Reads a PEM file given by `flag`, checking it holds a PEM block of `label`.
fn read_pem(flag: &str, path: &Path, label: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN ") || !text.contains(label) {
        bail!("{flag} {}: no PEM {label} in the file", path.display());
    }
    Ok(pem)
}

impl EtcdAuthArgs {
    /// The settings for `endpoints` (comma-separated URLs) under `prefix`, with these flags'
    /// TLS and user; every file is read and checked now, so a bad one fails the start naming
    /// its flag rather than the first etcd request.
    pub fn settings(
        &self,
        endpoints: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<EtcdSettings> {
        let mut s = EtcdSettings::new(endpoints.split(',').map(|e| e.trim().to_string()).collect());
        s.prefix = prefix.to_string();
        s.request_timeout = timeout;
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(cert), Some(key)) => Some((
                read_pem("--etcd-cert", cert, "CERTIFICATE")?,
                read_pem("--etcd-key", key, "PRIVATE KEY")?,
            )),
            (None, None) => None,
            _ => bail!("--etcd-cert and --etcd-key go together"),
        };
        let ca_pem = match &self.etcd_ca {
            Some(ca) => Some(read_pem("--etcd-ca", ca, "CERTIFICATE")?),
            None => None,
        };
        if ca_pem.is_some() || identity.is_some() {
            s.tls = Some(EtcdTls { ca_pem, identity });
        }
        let env_password = std::env::var(PASSWORD_ENV).ok();
        if env_password.as_deref() == Some("")
            && self.etcd_user.is_some()
            && self.etcd_password_file.is_none()
        {
            bail!("{PASSWORD_ENV} is empty");
        }
        if env_password.as_deref().is_some_and(|p| !p.is_empty()) && self.etcd_user.is_none() {
            tracing::warn!("{PASSWORD_ENV} is set but --etcd-user is not: no etcd login");
        }
        s.user = match (&self.etcd_user, &self.etcd_password_file, env_password) {
            (Some(name), Some(file), _) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--etcd-password-file {}", file.display()))?;
                let password = text.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    bail!("--etcd-password-file {}: the file is empty", file.display());
                }
                Some(EtcdUser {
                    name: name.clone(),
                    password,
                })
            }
            (Some(name), None, Some(password)) => Some(EtcdUser {
                name: name.clone(),
                password,
            }),
            (Some(_), None, None) => {
                bail!("--etcd-user needs --etcd-password-file or {PASSWORD_ENV}")
            }
            (None, Some(_), _) => bail!("--etcd-password-file needs --etcd-user"),
            (None, None, _) => None,
        };
        if s.user.is_some() {
            if let Some(plain) = s.endpoints.iter().find(|e| !e.starts_with("https://")) {
                tracing::warn!(
                    endpoint = %plain,
                    "--etcd-user over a plaintext etcd URL: the password crosses the network \
                     in the clear (use https:// with --etcd-ca)"
                );
            }
        }
        Ok(s)
    }
}
