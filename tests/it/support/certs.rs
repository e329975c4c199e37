//! Certificates for client assertions, made with `openssl` once per test process:
//! the blueprint's (registered at the identity double) and one Entra does not know.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A self-signed RSA certificate and its key.
pub struct TestCertificate {
    /// One PEM file with the private key and the certificate: what
    /// `AZURE_CLIENT_CERTIFICATE_PATH` points at.
    pub path: PathBuf,
    /// The same with the certificate first, then the key (`cat cert key`).
    pub path_cert_first: PathBuf,
    /// The private key alone (PEM), for tests that sign assertions themselves.
    pub key_pem: Vec<u8>,
    /// The public key (PEM): what the identity double checks signatures with.
    pub public_pem: Vec<u8>,
    /// base64url of the SHA-256 of the certificate's DER (`x5t#S256`).
    pub thumbprint: String,
    /// base64url of the RSA modulus (the JWK's `n`; `e` is 65537, `AQAB`).
    pub modulus: String,
}

/// The certificate registered on the blueprint (and the classic app) at the double.
pub fn registered() -> &'static TestCertificate {
    static CERT: OnceLock<TestCertificate> = OnceLock::new();
    CERT.get_or_init(|| make("blueprint"))
}

/// The double's token-signing keys (`kid` `k1`, and `k2` after a rotation).
pub fn signing(n: usize) -> &'static TestCertificate {
    static KEYS: [OnceLock<TestCertificate>; 2] = [OnceLock::new(), OnceLock::new()];
    KEYS[n - 1].get_or_init(|| make(&format!("signing-{n}")))
}

/// A certificate the double has never seen.
pub fn unknown() -> &'static TestCertificate {
    static CERT: OnceLock<TestCertificate> = OnceLock::new();
    CERT.get_or_init(|| make("stranger"))
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); scripts/test.sh installs it"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn make(name: &str) -> TestCertificate {
    let dir = super::log_dir()
        .parent()
        .expect("the test tmp dir")
        .join(format!("certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder for certificates");
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    let (key_s, cert_s) = (key.to_str().unwrap(), cert.to_str().unwrap());
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        key_s,
        "-out",
        cert_s,
    ]);
    let public_pem = openssl(&["x509", "-in", cert_s, "-pubkey", "-noout"]);
    let key_pem = std::fs::read(&key).expect("the key");
    let cert_pem = std::fs::read(&cert).expect("the certificate");
    let der = CertificateDer::from_pem_slice(&cert_pem).expect("a PEM certificate");
    let thumbprint =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref()));
    let modulus =
        String::from_utf8(openssl(&["rsa", "-in", key_s, "-noout", "-modulus"])).expect("text");
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, [key_pem.as_slice(), cert_pem.as_slice()].concat())
        .expect("the combined PEM");
    let path_cert_first = dir.join(format!("{name}-cert-first.pem"));
    std::fs::write(
        &path_cert_first,
        [cert_pem.as_slice(), key_pem.as_slice()].concat(),
    )
    .expect("the combined PEM");
    // The key's body lines join the list of what no log may contain.
    for line in String::from_utf8_lossy(&key_pem)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(3)
    {
        super::idp::record_issued(line);
    }
    TestCertificate {
        path,
        path_cert_first,
        key_pem,
        public_pem,
        thumbprint,
        modulus,
    }
}
