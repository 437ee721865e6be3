//! TLS for `rediss://`: rustls running over any [`Transport`], inside the component.
//!
//! Why in the guest rather than through the `wasi:tls` proposal: a stock wasmtime host then
//! needs nothing beyond TCP (`-S inherit-network`), and the guest controls verification —
//! wasmtime's own `wasi:tls` provider trusts only the web PKI roots, so a private CA (the
//! common case for Redis) would need a custom host. The price is size (~0.68 MB of rustls,
//! ring and the root store), which is why this module sits behind the `tls` feature and
//! the plain component stays small.
//!
//! Everything here is pure over the [`Connector`]/[`Transport`] seam, so it runs natively
//! in unit tests against an in-memory rustls server.
//!
//! Two rules shape the I/O:
//! - the last handshake flight (TLS 1.3: the client `Finished`) is not sent on its own but
//!   together with the first command, in one write: sent alone, the command behind it waits
//!   on Nagle + delayed ACK (~40 ms), since wasmtime never sets TCP_NODELAY;
//! - every wait is the inner transport's, bounded by its deadline: a TLS client pointed at a
//!   plaintext port would otherwise wait forever for a handshake reply.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

use crate::config::{ConfigError, TlsSettings};
use crate::transport::{Connector, Endpoint, IoError, Transport};

/// Plaintext read out of rustls per call; replies longer than this take several calls.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

/// Wraps a connector so each connection runs TLS, verified as [`TlsSettings`] says.
/// Clones share the TLS configuration (a cluster client clones it for each node).
#[derive(Clone)]
pub struct TlsConnector<C> {
    inner: C,
    /// Built once per store: the root store and verifier are reused across reconnects, and
    /// so is rustls's session cache (a reconnect resumes instead of a full handshake).
    config: Arc<ClientConfig>,
}

impl<C: Connector> TlsConnector<C> {
    /// # Errors
    /// The CA certificate text is not PEM, holds no certificate, or holds one that cannot
    /// be a trust anchor.
    pub fn new(inner: C, settings: &TlsSettings) -> Result<TlsConnector<C>, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| ConfigError(format!("TLS setup failed: {err}")))?;
        let config = if settings.danger_accept_invalid_certificates {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider)))
                .with_no_client_auth()
        } else {
            let roots = match &settings.ca_certificates {
                Some(pem) => roots_from_pem(pem)?,
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(TlsConnector {
            inner,
            config: Arc::new(config),
        })
    }
}

/// The certificates of `pem` as the only trust anchors.
fn roots_from_pem(pem: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert
            .map_err(|err| ConfigError(format!("TLS CA certificate PEM cannot be read: {err}")))?;
        roots.add(cert).map_err(|err| {
            ConfigError(format!(
                "TLS CA certificate #{} cannot be used as a trust anchor: {err}",
                index + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(ConfigError(
            "TLS CA certificate text holds no PEM CERTIFICATE block".into(),
        ));
    }
    Ok(roots)
}

impl<C: Connector> Connector for TlsConnector<C> {
    type Transport = TlsTransport<C::Transport>;

    /// Connects, then runs the TLS handshake up to (not including) the client's last flight,
    /// which goes out with the first [`Transport::send`]. `timeout` covers both.
    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> Result<Self::Transport, IoError> {
        let started = Instant::now();
        // An IP literal becomes `ServerName::IpAddress` (verified against IP SANs, no SNI).
        let server_name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
            IoError::Connect(format!(
                "host {} is not a valid TLS server name",
                endpoint.host
            ))
        })?;
        let inner = self.inner.connect(endpoint, timeout)?;
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(IoError::Timeout);
        }
        let tls = ClientConnection::new(self.config.clone(), server_name)
            .map_err(|err| IoError::Connect(format!("TLS setup failed: {err}")))?;
        let mut transport = TlsTransport {
            inner,
            tls,
            incoming: Vec::new(),
            fed: 0,
            outgoing: Vec::new(),
            plaintext: vec![0; PLAINTEXT_CHUNK].into_boxed_slice(),
        };
        transport.inner.start_operation(remaining);
        transport
            .handshake()
            .map_err(|err| handshake_error(err, remaining))?;
        Ok(transport)
    }
}

/// A TLS session over an inner transport.
pub struct TlsTransport<T> {
    inner: T,
    tls: ClientConnection,
    /// TLS bytes received; those from `fed` on are not yet handed to rustls.
    incoming: Vec<u8>,
    fed: usize,
    /// TLS records to send, gathered so one `send` carries them all.
    outgoing: Vec<u8>,
    /// Scratch space for decrypted bytes, reused so reads allocate nothing.
    plaintext: Box<[u8]>,
}

/// How a handshake step failed, before it is described.
enum HandshakeFailure {
    Io(IoError),
    Tls(rustls::Error),
}

impl From<IoError> for HandshakeFailure {
    fn from(err: IoError) -> HandshakeFailure {
        HandshakeFailure::Io(err)
    }
}

impl<T: Transport> TlsTransport<T> {
    /// Drives the handshake until rustls may send application data. TLS 1.3 gets there with
    /// the client's `Finished` still queued: [`Transport::send`] flushes it with the command.
    fn handshake(&mut self) -> Result<(), HandshakeFailure> {
        while self.tls.is_handshaking() {
            if self.tls.wants_write() {
                self.flush()?;
            } else {
                if self.fed == self.incoming.len() {
                    self.refill()?;
                }
                self.feed()?;
            }
        }
        Ok(())
    }

    /// Sends every queued TLS record in one write of the inner transport.
    fn flush(&mut self) -> Result<(), IoError> {
        self.outgoing.clear();
        while self.tls.wants_write() {
            // Writing into a `Vec` cannot fail.
            if self.tls.write_tls(&mut self.outgoing).is_err() {
                break;
            }
        }
        if self.outgoing.is_empty() {
            return Ok(());
        }
        let sent = self.inner.send(&self.outgoing);
        // A large value's records need not stay allocated once sent.
        if self.outgoing.capacity() > 4 * PLAINTEXT_CHUNK {
            self.outgoing = Vec::new();
        }
        sent
    }

    /// Waits for more TLS bytes; only called once every received byte was fed to rustls.
    fn refill(&mut self) -> Result<(), IoError> {
        self.incoming.clear();
        self.fed = 0;
        self.inner.receive(&mut self.incoming)
    }

    /// Hands rustls what it takes of the received bytes (at most about one record's worth:
    /// it holds little decrypted data, so the caller drains it between feeds) and
    /// processes it.
    fn feed(&mut self) -> Result<(), HandshakeFailure> {
        let mut rest = &self.incoming[self.fed..];
        let before = rest.len();
        let taken = self.tls.read_tls(&mut rest);
        self.fed += before - rest.len();
        if let Err(err) = taken {
            return Err(HandshakeFailure::Io(IoError::Broken(format!(
                "TLS input rejected: {err}"
            ))));
        }
        if let Err(err) = self.tls.process_new_packets() {
            // Tell the server why (rustls queued an alert); the error is what matters.
            let _ = self.flush();
            return Err(HandshakeFailure::Tls(err));
        }
        Ok(())
    }

    /// Appends the decrypted bytes rustls holds to `buf`; `true` once the server has
    /// closed the TLS session (close_notify) and nothing is left.
    fn drain_plaintext(&mut self, buf: &mut Vec<u8>) -> Result<bool, IoError> {
        loop {
            match self.tls.reader().read(&mut self.plaintext) {
                Ok(0) => return Ok(true),
                Ok(n) => buf.extend_from_slice(&self.plaintext[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(IoError::Broken(format!("TLS read failed: {err}"))),
            }
        }
    }
}

impl<T: Transport> Transport for TlsTransport<T> {
    fn start_operation(&mut self, timeout: Duration) {
        self.inner.start_operation(timeout);
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        let mut rest = bytes;
        loop {
            // rustls encrypts at once but holds at most its buffer limit (64 KiB) of records:
            // a large value goes out in record batches, each flushed before the next.
            let taken = self
                .tls
                .writer()
                .write(rest)
                .map_err(|err| IoError::Broken(format!("TLS write failed: {err}")))?;
            rest = &rest[taken..];
            self.flush()?;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError> {
        let start = buf.len();
        loop {
            // Decrypt all that has arrived, draining as rustls releases it: it refuses
            // more input while its small plaintext buffer is full.
            loop {
                let closed = self.drain_plaintext(buf)?;
                if closed {
                    return if buf.len() > start {
                        Ok(())
                    } else {
                        Err(IoError::Closed)
                    };
                }
                if self.fed == self.incoming.len() {
                    break;
                }
                self.feed().map_err(|failure| match failure {
                    HandshakeFailure::Io(err) => err,
                    HandshakeFailure::Tls(err) => IoError::Broken(format!("TLS error: {err}")),
                })?;
            }
            if buf.len() > start {
                return Ok(());
            }
            // Post-handshake messages may need an answer (a key update, say).
            if self.tls.wants_write() {
                self.flush()?;
            }
            self.refill()?;
        }
    }
}

/// Describes a failed handshake for the caller: always says TLS, and why.
fn handshake_error(failure: HandshakeFailure, timeout: Duration) -> IoError {
    let why = match failure {
        HandshakeFailure::Io(IoError::Timeout) => format!(
            "TLS handshake got no answer within {} ms; is the port a TLS port?",
            timeout.as_millis()
        ),
        HandshakeFailure::Io(IoError::Closed) => {
            "the server closed the connection during the TLS handshake; is the port a TLS port?"
                .into()
        }
        HandshakeFailure::Io(IoError::Broken(why)) => {
            format!("the connection broke during the TLS handshake: {why}")
        }
        HandshakeFailure::Io(IoError::Connect(why)) => why,
        HandshakeFailure::Tls(err) => describe_tls_error(&err),
    };
    IoError::Connect(why)
}

fn describe_tls_error(err: &rustls::Error) -> String {
    use rustls::Error;
    match err {
        Error::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::UnknownIssuer => {
                    "it is not signed by a trusted CA (give the server's CA certificate as the TLS CA option)".into()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "it is not valid for the host name in the URL".into()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired".into()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet".into()
                }
                // A trusted CA with the issuer's name did not sign it: another CA by that name.
                CertificateError::BadSignature => {
                    "its signature does not verify against the trusted CA of that name".into()
                }
                other => format!("{other:?}"),
            };
            format!("TLS handshake failed: the server certificate was rejected: {why}")
        }
        Error::InvalidMessage(_) => {
            "TLS handshake failed: the server did not answer with TLS; is the port a plaintext (redis://) port?".into()
        }
        Error::AlertReceived(alert) => {
            format!("TLS handshake failed: the server refused it with alert {alert:?}")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Accepts any server certificate: `danger-accept-invalid-certificates`. The handshake's
/// signatures are still checked, so the session is encrypted — but with whoever answered.
#[derive(Debug)]
struct AcceptAnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connector that speaks TLS when the URL is `rediss://` and plain TCP otherwise.
#[derive(Clone)]
pub enum MaybeTlsConnector<C> {
    Plain(C),
    Tls(TlsConnector<C>),
}

impl<C: Connector> MaybeTlsConnector<C> {
    /// TLS exactly when `tls` is `Some` (the URL is `rediss://`).
    ///
    /// # Errors
    /// As [`TlsConnector::new`].
    pub fn new(inner: C, tls: Option<&TlsSettings>) -> Result<Self, ConfigError> {
        Ok(match tls {
            Some(settings) => MaybeTlsConnector::Tls(TlsConnector::new(inner, settings)?),
            None => MaybeTlsConnector::Plain(inner),
        })
    }
}

pub enum MaybeTlsTransport<T> {
    Plain(T),
    /// Boxed: a rustls session is a few kilobytes.
    Tls(Box<TlsTransport<T>>),
}

impl<C: Connector> Connector for MaybeTlsConnector<C> {
    type Transport = MaybeTlsTransport<C::Transport>;

    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> Result<Self::Transport, IoError> {
        match self {
            MaybeTlsConnector::Plain(inner) => inner
                .connect(endpoint, timeout)
                .map(MaybeTlsTransport::Plain),
            MaybeTlsConnector::Tls(tls) => tls
                .connect(endpoint, timeout)
                .map(|transport| MaybeTlsTransport::Tls(Box::new(transport))),
        }
    }
}

impl<T: Transport> Transport for MaybeTlsTransport<T> {
    fn start_operation(&mut self, timeout: Duration) {
        match self {
            MaybeTlsTransport::Plain(inner) => inner.start_operation(timeout),
            MaybeTlsTransport::Tls(tls) => tls.start_operation(timeout),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        match self {
            MaybeTlsTransport::Plain(inner) => inner.send(bytes),
            MaybeTlsTransport::Tls(tls) => tls.send(bytes),
        }
    }

    fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError> {
        match self {
            MaybeTlsTransport::Plain(inner) => inner.receive(buf),
            MaybeTlsTransport::Tls(tls) => tls.receive(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ServerConfig, ServerConnection};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// What the peer of a fake connection does.
    enum Peer {
        /// A rustls server that echoes whatever plaintext it receives.
        EchoTls(Box<ServerConnection>),
        /// A plaintext Redis: answers any bytes with an error line.
        PlainRedis { answered: bool },
        /// Never answers.
        Silent,
    }

    #[derive(Default)]
    struct Log {
        /// Sizes of the inner transport's writes, in order.
        sends: Vec<usize>,
    }

    struct FakeConnector {
        peer: RefCell<Option<Peer>>,
        log: Rc<RefCell<Log>>,
    }

    struct FakeTransport {
        peer: Peer,
        log: Rc<RefCell<Log>>,
    }

    impl Connector for FakeConnector {
        type Transport = FakeTransport;
        fn connect(&self, _: &Endpoint, _: Duration) -> Result<FakeTransport, IoError> {
            let peer = self.peer.borrow_mut().take().expect("one connection");
            Ok(FakeTransport {
                peer,
                log: self.log.clone(),
            })
        }
    }

    impl Transport for FakeTransport {
        fn start_operation(&mut self, _: Duration) {}

        fn send(&mut self, bytes: &[u8]) -> Result<(), IoError> {
            self.log.borrow_mut().sends.push(bytes.len());
            match &mut self.peer {
                Peer::EchoTls(server) => {
                    let mut rest = bytes;
                    let mut echo = Vec::new();
                    while !rest.is_empty() {
                        server.read_tls(&mut rest).unwrap();
                        // The client's alert after a failed verification ends up here.
                        if server.process_new_packets().is_err() {
                            return Ok(());
                        }
                        server.reader().read_to_end(&mut echo).ok();
                    }
                    server.writer().write_all(&echo).unwrap();
                }
                Peer::PlainRedis { answered } => *answered = true,
                Peer::Silent => {}
            }
            Ok(())
        }

        fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError> {
            match &mut self.peer {
                Peer::EchoTls(server) if server.wants_write() => {
                    while server.wants_write() {
                        server.write_tls(buf).unwrap();
                    }
                    Ok(())
                }
                Peer::PlainRedis { answered: true } => {
                    buf.extend_from_slice(b"-ERR unknown command\r\n");
                    Ok(())
                }
                _ => Err(IoError::Timeout),
            }
        }
    }

    struct Pki {
        ca_pem: String,
        server: Arc<ServerConfig>,
    }

    /// A CA (named `ca_name`: two CAs with one name would be confused for each other) and
    /// a server configuration with a certificate for `names` signed by it.
    fn pki_named(ca_name: &str, names: &[&str]) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    fn pki(names: &[&str]) -> Pki {
        pki_named("test CA", names)
    }

    fn tls_connector(peer: Peer, settings: &TlsSettings) -> TlsConnector<FakeConnector> {
        let inner = FakeConnector {
            peer: RefCell::new(Some(peer)),
            log: Rc::default(),
        };
        TlsConnector::new(inner, settings).unwrap()
    }

    fn trusting(ca_pem: &str) -> TlsSettings {
        TlsSettings {
            ca_certificates: Some(ca_pem.to_owned()),
            danger_accept_invalid_certificates: false,
        }
    }

    fn endpoint(host: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            port: 6380,
        }
    }

    fn echo_peer(pki: &Pki) -> Peer {
        let mut server = ServerConnection::new(pki.server.clone()).unwrap();
        server.set_buffer_limit(None);
        Peer::EchoTls(Box::new(server))
    }

    #[test]
    fn last_handshake_flight_goes_out_with_the_first_command_in_one_write() {
        let pki = pki(&["127.0.0.1"]);
        let connector = tls_connector(echo_peer(&pki), &trusting(&pki.ca_pem));
        let mut tls = connector
            .connect(&endpoint("127.0.0.1"), Duration::from_secs(1))
            .unwrap();
        // Only the ClientHello has been written: the client Finished waits for the command.
        assert_eq!(connector.inner.log.borrow().sends.len(), 1);
        tls.send(b"*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(connector.inner.log.borrow().sends.len(), 2);
        let mut reply = Vec::new();
        while reply.len() < 14 {
            tls.receive(&mut reply).unwrap();
        }
        assert_eq!(reply, b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn values_larger_than_the_tls_buffers_cross_intact() {
        let pki = pki(&["localhost"]);
        let connector = tls_connector(echo_peer(&pki), &trusting(&pki.ca_pem));
        let mut tls = connector
            .connect(&endpoint("localhost"), Duration::from_secs(1))
            .unwrap();
        let value: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        tls.send(&value).unwrap();
        // Sent in batches bounded by rustls's buffer, not as one 300 KB write.
        let sends = connector.inner.log.borrow().sends.clone();
        assert!(sends.len() > 3, "{sends:?}");
        assert!(sends.iter().all(|&n| n <= 80 * 1024), "{sends:?}");
        let mut echoed = Vec::new();
        while echoed.len() < value.len() {
            tls.receive(&mut echoed).unwrap();
        }
        assert_eq!(echoed, value);
    }

    #[test]
    fn certificate_from_an_untrusted_ca_fails_the_handshake_with_a_tls_error() {
        let server_pki = pki(&["127.0.0.1"]);
        let other = pki_named("another CA", &["127.0.0.1"]);
        let connector = tls_connector(echo_peer(&server_pki), &trusting(&other.ca_pem));
        match connector.connect(&endpoint("127.0.0.1"), Duration::from_secs(1)) {
            Err(IoError::Connect(message)) => {
                assert!(message.contains("not signed by a trusted CA"), "{message}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("an untrusted certificate was accepted"),
        }
    }

    #[test]
    fn certificate_for_another_name_fails_unless_verification_is_disabled() {
        let pki = pki(&["redis.example"]);
        let connector = tls_connector(echo_peer(&pki), &trusting(&pki.ca_pem));
        match connector.connect(&endpoint("127.0.0.1"), Duration::from_secs(1)) {
            Err(IoError::Connect(message)) => {
                assert!(message.contains("not valid for the host name"), "{message}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a certificate for another name was accepted"),
        }
        let danger = TlsSettings {
            ca_certificates: None,
            danger_accept_invalid_certificates: true,
        };
        let unverified = tls_connector(echo_peer(&pki), &danger);
        assert!(unverified
            .connect(&endpoint("127.0.0.1"), Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn plaintext_or_silent_peers_fail_the_handshake_with_a_tls_error() {
        let settings = TlsSettings {
            ca_certificates: None,
            danger_accept_invalid_certificates: false,
        };
        for peer in [Peer::PlainRedis { answered: false }, Peer::Silent] {
            let connector = tls_connector(peer, &settings);
            match connector.connect(&endpoint("127.0.0.1"), Duration::from_secs(1)) {
                Err(IoError::Connect(message)) => assert!(message.contains("TLS"), "{message}"),
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("handshake succeeded against a non-TLS peer"),
            }
        }
    }

    #[test]
    fn ca_text_without_a_certificate_is_a_config_error() {
        for pem in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let inner = FakeConnector {
                peer: RefCell::new(None),
                log: Rc::default(),
            };
            assert!(TlsConnector::new(inner, &trusting(pem)).is_err(), "{pem:?}");
        }
    }
}
