//! Certificates for the TLS tests, generated per test run with `rcgen`: a CA, and a server
//! certificate it signs for the loopback names the tests dial.

use crate::redis_server::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and a server certificate signed by it.
pub struct TestPki {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    /// What the server runs with.
    pub server: TlsFiles,
}

/// A fresh CA named `ca_name`, and a server certificate for `names` (DNS names, or IP
/// addresses, which become IP address SANs) signed by it.
pub fn pki(ca_name: &str, names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut server_params = CertificateParams::new(names).expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "taskstore test server");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    TestPki {
        ca_pem: ca_cert.pem(),
        server: TlsFiles {
            certificate: server_cert.pem(),
            private_key: server_key.serialize_pem(),
            ca_certificate: ca_cert.pem(),
        },
    }
}
