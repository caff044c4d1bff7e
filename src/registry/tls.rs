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
//! through WebPKI. The pinned certificate must be valid for the host name
//! and within its validity dates; the handshake signature is always
//! verified.

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

/// The system's roots, read and parsed once per process: a build makes a
/// client per registry task (the cache import, each seeding, each early
/// upload, the push: six in a CI job that changed nothing), and each load
/// read and decoded the whole bundle and the hashed certificate dir again
/// (about 290 PEM certificates here). Unreadable system certificates are
/// skipped, as reqwest does.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    })
}

/// A rustls client config trusting the system roots and `files`.
pub fn client_config(files: &[PathBuf]) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = system_roots().clone();
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
            check_validity(end_entity.as_ref(), now.as_secs())?;
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

/// Refuse a pinned certificate outside its validity dates (WebPKI does
/// this for chains; the pinned path must too).
fn check_validity(der: &[u8], now: u64) -> Result<(), rustls::Error> {
    use rustls::CertificateError::{BadEncoding, Expired, NotValidYet};
    let (not_before, not_after) =
        validity(der).ok_or(rustls::Error::InvalidCertificate(BadEncoding))?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < not_before {
        return Err(rustls::Error::InvalidCertificate(NotValidYet));
    }
    if now > not_after {
        return Err(rustls::Error::InvalidCertificate(Expired));
    }
    Ok(())
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `notBefore` and `notAfter` of an X.509 certificate, in Unix seconds.
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, cert, _) = der(cert)?; // Certificate
    let (_, tbs, _) = der(cert)?; // TBSCertificate
    let (tag, _, mut rest) = der(tbs)?;
    if tag != 0xa0 {
        rest = tbs; // no explicit version: the serial comes first
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = der(rest)?;
    let (t1, v1, rest) = der(validity)?;
    let (t2, v2, _) = der(rest)?;
    Some((der_time(t1, v1)?, der_time(t2, v2)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (n(0)?, n(2)?);
    let secs = n(4)? * 3600 + n(6)? * 60 + n(8)?;
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"261201161057Z"), Some(1_796_141_457));
        assert_eq!(der_time(0x18, b"20000229235959Z"), Some(951_868_799));
        assert_eq!(der_time(0x17, b"261201161057"), None);
        assert_eq!(der_time(0x05, b"261201161057Z"), None);
    }

    #[test]
    fn validity_of_a_minimal_certificate() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 1, SEQUENCE {},
        // SEQUENCE {}, SEQUENCE { UTCTime, UTCTime } } }
        let mut validity_seq = vec![0x30, 30, 0x17, 13];
        validity_seq.extend_from_slice(b"700101000000Z");
        validity_seq.extend_from_slice(&[0x17, 13]);
        validity_seq.extend_from_slice(b"700101000100Z");
        let mut tbs_body = vec![0xa0, 3, 0x02, 1, 2, 0x02, 1, 1, 0x30, 0, 0x30, 0];
        tbs_body.extend_from_slice(&validity_seq);
        let mut tbs = vec![0x30, tbs_body.len() as u8];
        tbs.extend_from_slice(&tbs_body);
        let mut cert = vec![0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        assert_eq!(validity(&cert), Some((0, 60)));
        assert!(check_validity(&cert, 30).is_ok());
        assert!(check_validity(&cert, 61).is_err());
        assert!(check_validity(&cert[..10], 30).is_err());
    }
}
