//! TLS trust as docker, skopeo, buildah and curl apply it.
//!
//! Roots are the system's (or `SSL_CERT_FILE` alone, as rustls-native-certs
//! reads it), plus `/etc/{containers,docker}/certs.d/HOST/*.crt` and
//! `Settings::ca_files`. Chains are verified by rustls's WebPKI verifier,
//! unchanged — with one addition: a server certificate byte-identical to a
//! certificate in one of those files is accepted when it is valid for the
//! host name. That is the self-signed certificate docker's registry guide
//! makes (`openssl req -x509 … -addext subjectAltName=…`), which carries
//! `CA:TRUE`; WebPKI refuses a CA certificate as an end-entity certificate
//! (`CaUsedAsEndEntity`), while OpenSSL-based clients trust it because it
//! is itself a trust anchor. Pinning the exact bytes accepts that case and
//! nothing else: another certificate signed by such a file still goes
//! through WebPKI. The handshake signature is always verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The CA files rbuild adds for `host` (besides the system roots).
pub fn ca_files_for(host: &str, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = extra.to_vec();
    if let Some(f) = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(f));
    }
    for base in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
        files.extend(crt_files(&Path::new(base).join(host)));
    }
    files
}

fn crt_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    out.sort();
    out
}

/// A rustls client config trusting the system roots and `files`.
pub fn client_config(files: &[PathBuf]) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped, as reqwest does.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut pinned = Vec::new();
    for f in files {
        let pem = std::fs::read(f).with_context(|| format!("reading CA file {}", f.display()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("parsing CA file {}: {e:?}", f.display()))?;
        if certs.is_empty() {
            anyhow::bail!("CA file {} holds no PEM certificate", f.display());
        }
        roots.add_parsable_certificates(certs.iter().cloned());
        pinned.extend(certs);
    }
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("setting up TLS certificate verification")?,
        )
    };
    let verifier = PinnedOrWebPki {
        pinned,
        webpki,
        provider: provider.clone(),
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
