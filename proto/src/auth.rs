//! Client credentials on the wire: the bearer token every request carries and the TLS
//! settings of a connection, shared by the Rust client, the CLI and node-to-node calls.
//!
//! A token is a secret: [`Bearer`]'s `Debug` never prints it, and nothing here logs it.

use crate::headers::AUTHORIZATION;
use std::fmt;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Adds `authorization: Bearer TOKEN` to every request (nothing without a token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Credentials for `token` (`None`: send none). A token must be visible ASCII.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Bearer(None));
        };
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces".into());
        }
        let mut v = MetadataValue::try_from(format!("Bearer {t}"))
            .map_err(|_| "the token is not a valid header value".to_string())?;
        // Keeps HTTP/2 header compression from indexing the secret.
        v.set_sensitive(true);
        Ok(Bearer(Some(v)))
    }

    /// The metadata value to send, if any.
    pub fn value(&self) -> Option<&MetadataValue<Ascii>> {
        self.0.as_ref()
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

/// A channel whose requests carry a [`Bearer`] token.
pub type Transport = InterceptedService<Channel, Bearer>;

/// TLS settings of a client connection.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM certificates of the CAs that sign the server's certificate (`None`: the system's).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and private key to present (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to check the server's certificate against (default: the host of the address).
    pub domain: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("identity", &self.identity.as_ref().map(|_| "<pem>"))
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// The tonic configuration.
    pub fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_pem {
            Some(pem) => c.ca_certificate(Certificate::from_pem(pem)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// The endpoint of `addr` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`): TLS when
/// `tls` is given or the address says `https://` (then with the system's CAs unless `tls`
/// names some). A plaintext `http://` address with `tls` is refused: it would silently drop
/// the encryption the caller asked for.
pub fn endpoint(
    addr: &str,
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
) -> Result<Endpoint, String> {
    let (https, hostport) = if let Some(rest) = addr.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = addr.strip_prefix("http://") {
        if tls.is_some() {
            return Err(format!(
                "{addr}: an http:// address with TLS settings; use https://"
            ));
        }
        (false, rest)
    } else {
        (tls.is_some(), addr)
    };
    let hostport = hostport.trim_end_matches('/');
    let uri = format!("{}://{hostport}", if https { "https" } else { "http" });
    let mut ep = Endpoint::from_shared(uri)
        .map_err(|e| format!("invalid address {addr:?} (expected HOST:PORT): {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    if https {
        let default = ClientTls::default();
        let cfg = tls.unwrap_or(&default).config();
        ep = ep
            .tls_config(cfg)
            .map_err(|e| format!("TLS settings for {addr}: {e}"))?;
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_redacted_and_checked() {
        let b = Bearer::new(Some("s3cr3t")).unwrap();
        assert!(!format!("{b:?}").contains("s3cr3t"));
        assert_eq!(b.value().unwrap().to_str().unwrap(), "Bearer s3cr3t");
        assert!(Bearer::new(Some("a b")).is_err());
        assert!(Bearer::new(None).unwrap().value().is_none());
        assert!(Bearer::new(Some("  ")).unwrap().value().is_none());
    }

    #[test]
    fn endpoints_pick_the_scheme() {
        let t = Duration::from_secs(1);
        assert_eq!(
            endpoint("h:1", None, t).unwrap().uri().scheme_str(),
            Some("http")
        );
        assert_eq!(
            endpoint("https://h:1", None, t).unwrap().uri().scheme_str(),
            Some("https")
        );
        let tls = ClientTls::default();
        assert_eq!(
            endpoint("h:1", Some(&tls), t).unwrap().uri().scheme_str(),
            Some("https")
        );
        assert!(endpoint("http://h:1", Some(&tls), t).is_err());
    }
}
