//! TLS between peers: how a buyer and a selling peer recognise each other.
//!
//! There is no certificate authority between peers. Each peer presents a
//! self-signed certificate made from its registered ed25519 identity key,
//! and each side checks the other's *key* against what the cluster says: the
//! buyer pins the seller key from the purchase answer ([`client_config`]),
//! and the seller compares the buyer's key ([`peer_key_of`]) with the one
//! bound in the ticket, in its handler. The seller's TLS layer therefore
//! only insists on a well-formed, self-signed ed25519 client certificate and
//! a valid handshake signature ([`server_config`]).
//!
//! Only TLS 1.3 is spoken, with ALPN `h2`, and only ed25519 signatures are
//! accepted. Signatures are checked by rustls' own helpers with the ring
//! provider's algorithms; nothing here does cryptography by hand.
//!
//! [`connect`] opens a gRPC channel to a seller over such a connection, and
//! [`incoming`] turns a listener into the stream of TLS connections that
//! `tonic::transport::Server::serve_with_incoming_shutdown` wants; tonic
//! then hands each request the client's certificate.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, PeerMisbehaved, SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::Service;
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The name in every peer certificate and the name a buyer asks for. Names
/// prove nothing between peers (the key pin does); this one only has to be
/// a valid DNS name for TLS.
pub const PEER_SERVER_NAME: &str = "agora-peer";

/// How long a buyer waits for a seller's TCP connection and TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a seller gives one accepted connection to finish its TLS
/// handshake before dropping it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 stream and connection flow-control window of a buyer's channel.
/// Files travel as messages of about 1 MiB; with the 64 KiB default the
/// window, not the network, would cap throughput.
pub const FETCH_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How long the accept loop pauses after an error that is not about one
/// connection (out of file descriptors, say), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many connections one poll of [`incoming`] accepts before letting
/// finished handshakes through, so that a flood of connections cannot
/// starve the ones already established.
const ACCEPTS_PER_POLL: usize = 32;

/// The only application protocol spoken between peers.
const ALPN_H2: &[u8] = b"h2";

/// A peer's TLS identity: a self-signed certificate for its ed25519
/// identity key.
#[derive(Clone)]
pub struct PeerIdentity {
    /// The certificate with the signing key rustls uses for it; shared,
    /// because every configuration built from this identity presents the
    /// same pair.
    certified: Arc<CertifiedKey>,
    /// The identity key's public half, which is what the other side checks.
    public_key: [u8; 32],
}

impl PeerIdentity {
    /// Makes the certificate for `key`.
    ///
    /// # Errors
    /// When the key cannot be encoded or the certificate cannot be made;
    /// neither happens with a valid key.
    pub fn from_signing_key(key: &ed25519_dalek::SigningKey) -> Result<Self, PeerTlsError> {
        // A `SecretDocument`: wiped when dropped at the end of this function.
        let pkcs8 = key.to_pkcs8_der().map_err(PeerTlsError::KeyEncoding)?;
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes());

        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(PeerTlsError::Certificate)?;
        let mut params = rcgen::CertificateParams::new(vec![PEER_SERVER_NAME.to_owned()])
            .map_err(PeerTlsError::Certificate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, PEER_SERVER_NAME);
        let cert = params
            .self_signed(&key_pair)
            .map_err(PeerTlsError::Certificate)?;

        let signing_key =
            rustls::crypto::ring::sign::any_eddsa_type(&pkcs8).map_err(PeerTlsError::Config)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        // Cheap insurance that the certificate really carries this key.
        certified.keys_match().map_err(PeerTlsError::Config)?;

        Ok(Self {
            certified: Arc::new(certified),
            public_key: key.verifying_key().to_bytes(),
        })
    }

    /// The ed25519 public key this identity presents.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The self-signed certificate this identity presents.
    #[must_use]
    pub fn certificate(&self) -> &CertificateDer<'static> {
        // `CertifiedKey::new` was given exactly one certificate.
        &self.certified.cert[0]
    }
}

impl fmt::Debug for PeerIdentity {
    // The signing key must never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("public_key", &Hex(&self.public_key))
            .field("signing_key", &"<redacted>")
            .finish()
    }
}

/// Bytes shown as lowercase hex.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// The selling side: requires a client certificate carrying an ed25519
/// key, TLS 1.3, ALPN h2.
///
/// Which key the buyer must have is the handler's business (see
/// [`peer_key_of`]); this configuration accepts any peer that proves it
/// holds the ed25519 key of the certificate it presents.
///
/// # Errors
/// When rustls refuses the settings, which would be a bug.
pub fn server_config(identity: &PeerIdentity) -> Result<Arc<rustls::ServerConfig>, PeerTlsError> {
    let provider = ring_provider();
    let verifier = Arc::new(BuyerCertVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PeerTlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(
            &identity.certified,
        ))));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection proves its key afresh, which costs one
    // ed25519 signature per connection, and a buyer keeps its channel open.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The buying side: presents `identity`, accepts only a server certificate
/// whose ed25519 key is `expected_server_key`.
///
/// # Errors
/// When rustls refuses the settings, which would be a bug.
pub fn client_config(
    identity: &PeerIdentity,
    expected_server_key: [u8; 32],
) -> Result<Arc<rustls::ClientConfig>, PeerTlsError> {
    let provider = ring_provider();
    let verifier = Arc::new(SellerKeyVerifier {
        expected: expected_server_key,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PeerTlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(
            &identity.certified,
        ))));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every seller answers to the same name, so a resumed session must never
    // stand in for the key check; see `server_config`.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The ring provider, named explicitly rather than taken from the process
/// default, which another part of the program may have installed.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ed25519 key a certificate carries (None if it is not an ed25519
/// certificate).
#[must_use]
pub fn certificate_key(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (rest, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    ed25519_key_of(&parsed)
}

/// The ed25519 key in a parsed certificate's SubjectPublicKeyInfo.
fn ed25519_key_of(cert: &X509Certificate<'_>) -> Option<[u8; 32]> {
    let spki = cert.public_key();
    // RFC 8410: the algorithm is id-Ed25519, with no parameters.
    if spki.algorithm.algorithm != OID_SIG_ED25519 || spki.algorithm.parameters.is_some() {
        return None;
    }
    spki.subject_public_key.data.as_ref().try_into().ok()
}

/// The key of a well-formed ed25519 certificate that is correctly signed by
/// that same key, or why it is not one.
fn self_signed_ed25519_key(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let (rest, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
    if !rest.is_empty() {
        return Err(CertificateError::BadEncoding.into());
    }
    let key = ed25519_key_of(&parsed).ok_or_else(|| {
        CertificateError::UnsupportedSignatureAlgorithmContext {
            signature_algorithm_id: parsed.public_key().algorithm.algorithm.as_bytes().to_vec(),
            supported_algorithms: vec![rustls::pki_types::alg_id::ED25519],
        }
    })?;
    parsed
        .verify_signature(None)
        .map_err(|_| CertificateError::BadSignature)?;
    Ok(key)
}

/// Checks a TLS 1.3 handshake signature, which must be ed25519.
fn verify_ed25519_handshake(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        // Only ED25519 is offered (`supported_verify_schemes`).
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    verify_tls13_signature(message, cert, dss, algorithms)
}

/// Peers speak TLS 1.3 only (the configurations allow nothing else), so a
/// TLS 1.2 signature is never legitimately asked for.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General(
        "TLS 1.2 is not spoken between peers".to_owned(),
    ))
}

/// The buyer's check of the seller: its certificate must carry exactly the
/// key the cluster has for it. Names and dates are ignored; the key is the
/// whole of the trust.
#[derive(Debug)]
struct SellerKeyVerifier {
    /// The seller's ed25519 key, as the cluster answered.
    expected: [u8; 32],
    /// The ring provider's signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SellerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = self_signed_ed25519_key(end_entity)?;
        if key != self.expected {
            return Err(CertificateError::ApplicationVerificationFailure.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_handshake(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The seller's check of a buyer at the TLS layer: a self-signed ed25519
/// certificate, whatever its key; the handler then compares that key with
/// the ticket's.
#[derive(Debug)]
struct BuyerCertVerifier {
    /// The ring provider's signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for BuyerCertVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self_signed_ed25519_key(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_handshake(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The ed25519 key of the peer that sent `request` over a connection
/// accepted by [`incoming`] (from tonic's `Request::peer_certs()`).
#[must_use]
pub fn peer_key_of<T>(request: &tonic::Request<T>) -> Option<[u8; 32]> {
    let certs = request.peer_certs()?;
    certificate_key(certs.first()?)
}

/// A gRPC channel to a seller at `addr` (`host:port`) over TLS with
/// `config` (from [`client_config`]).
///
/// The channel connects now, so a seller that is down or presents another
/// key is an error here rather than at the first call. A seller that refuses
/// *our* certificate shows up at the first call instead: in TLS 1.3 the
/// client finishes its handshake before the server has judged it.
///
/// # Errors
/// When `addr` is not `host:port`, the seller cannot be reached within
/// [`CONNECT_TIMEOUT`], or the TLS handshake fails (its key is not the one
/// the cluster has for it, above all).
pub async fn connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, PeerTlsError> {
    // "http": the connector below does TLS itself. With "https" tonic would
    // look for TLS settings of its own and refuse to connect without them.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| PeerTlsError::InvalidAddress {
            addr: addr.to_owned(),
            source,
        })?
        .initial_stream_window_size(FETCH_WINDOW_BYTES)
        .initial_connection_window_size(FETCH_WINDOW_BYTES);
    let connector = SellerConnector {
        addr: Arc::from(addr),
        tls: TlsConnector::from(config),
    };
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|err| connect_error(addr, &err))
}

/// Opens TCP + TLS connections to one seller for tonic (which calls it
/// again whenever the channel reconnects). TCP_NODELAY is set here because
/// `Endpoint::tcp_nodelay` only reaches tonic's built-in connector; the
/// timeout is ours rather than `Endpoint::connect_timeout` so that
/// [`connect_error`] can tell a silent seller from a refusing one.
#[derive(Clone)]
struct SellerConnector {
    /// The seller's `host:port`; the URI tonic passes says the same.
    addr: Arc<str>,
    /// The buyer's TLS settings, pinning the seller's key.
    tls: TlsConnector,
}

impl SellerConnector {
    /// One connection: TCP, then the TLS handshake that checks the key.
    async fn open(self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectFailure> {
        let attempt = async {
            let tcp = TcpStream::connect(&*self.addr)
                .await
                .map_err(ConnectFailure::Tcp)?;
            tcp.set_nodelay(true).map_err(ConnectFailure::Tcp)?;
            self.tls
                .connect(peer_server_name(), tcp)
                .await
                .map_err(ConnectFailure::Handshake)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| ConnectFailure::TimedOut)?
    }
}

impl Service<Uri> for SellerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectFailure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.open().await.map(TokioIo::new) })
    }
}

/// [`PEER_SERVER_NAME`] as rustls wants it.
fn peer_server_name() -> ServerName<'static> {
    // A constant, checked by a test.
    ServerName::try_from(PEER_SERVER_NAME).expect("PEER_SERVER_NAME is a valid DNS name")
}

/// Why [`SellerConnector`] failed; it travels through tonic's error chain
/// and is turned back into a [`PeerTlsError`] by [`connect_error`].
#[derive(Debug, thiserror::Error)]
enum ConnectFailure {
    /// The TCP connection could not be opened.
    #[error("{0}")]
    Tcp(#[source] io::Error),
    /// The TLS handshake failed.
    #[error("{0}")]
    Handshake(#[source] io::Error),
    /// Neither finished within [`CONNECT_TIMEOUT`].
    #[error("no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    TimedOut,
}

/// The error a user should see for a failed `connect` to `addr`.
fn connect_error(addr: &str, err: &tonic::transport::Error) -> PeerTlsError {
    let addr = addr.to_owned();
    let failure = sources(err).find_map(|e| e.downcast_ref::<ConnectFailure>());
    match failure {
        Some(ConnectFailure::Tcp(io)) => PeerTlsError::SellerUnreachable {
            addr,
            reason: io.to_string(),
        },
        Some(ConnectFailure::TimedOut) => PeerTlsError::SellerTimedOut { addr },
        Some(ConnectFailure::Handshake(io)) => {
            let tls = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls {
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                )) => PeerTlsError::SellerKeyMismatch { addr },
                _ => PeerTlsError::SellerHandshake {
                    addr,
                    reason: io.to_string(),
                },
            }
        }
        // Past the connector: the HTTP/2 handshake, say.
        None => PeerTlsError::SellerUnreachable {
            addr,
            reason: error_chain(err),
        },
    }
}

/// The errors behind `err`, nearest first.
fn sources<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(err.source(), |&e| e.source())
}

/// An error and its sources, as one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    for source in sources(err) {
        let text = source.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Accepted connections for `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Each TCP connection gets TCP_NODELAY and a TLS handshake in its own task
/// (bounded by [`HANDSHAKE_TIMEOUT`]), so one slow client never blocks the
/// others. Failed handshakes are logged at debug level and skipped; the
/// stream never yields an error (tonic would stop serving on some) and ends
/// only when it is dropped, which also abandons handshakes in progress.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<tokio_rustls::server::TlsStream<TcpStream>, io::Error>> + Send + 'static
{
    TlsIncoming {
        listener,
        acceptor: TlsAcceptor::from(config),
        handshakes: JoinSet::new(),
        backoff: None,
    }
}

/// The stream behind [`incoming`].
struct TlsIncoming {
    /// Where buyers connect.
    listener: TcpListener,
    /// The seller's TLS settings.
    acceptor: TlsAcceptor,
    /// Handshakes in progress, one task each; `None` for one that failed.
    handshakes: JoinSet<Option<tokio_rustls::server::TlsStream<TcpStream>>>,
    /// Set after an accept error that is not about one connection: no
    /// accepting until it fires.
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TlsIncoming {
    /// Starts a handshake for every connection waiting on the listener (up
    /// to [`ACCEPTS_PER_POLL`]); makes sure `cx` is woken when more arrive.
    fn accept_waiting(&mut self, cx: &mut Context<'_>) {
        if let Some(backoff) = &mut self.backoff {
            if backoff.as_mut().poll(cx).is_pending() {
                return;
            }
            self.backoff = None;
        }
        for _ in 0..ACCEPTS_PER_POLL {
            match self.listener.poll_accept(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok((stream, peer))) => {
                    self.handshakes
                        .spawn(handshake(self.acceptor.clone(), stream, peer));
                }
                Poll::Ready(Err(err)) if is_connection_error(&err) => {
                    tracing::debug!(error = %err, "a peer connection failed before it was accepted");
                }
                Poll::Ready(Err(err)) => {
                    tracing::warn!(error = %err, "could not accept peer connections; pausing briefly");
                    let mut backoff = Box::pin(tokio::time::sleep(ACCEPT_BACKOFF));
                    // Registers the waker; a fresh sleep is not yet due.
                    if backoff.as_mut().poll(cx).is_pending() {
                        self.backoff = Some(backoff);
                        return;
                    }
                }
            }
        }
        // The budget ran out with connections possibly still waiting: come
        // back for them after handing out what is ready.
        cx.waker().wake_by_ref();
    }
}

impl Stream for TlsIncoming {
    type Item = Result<tokio_rustls::server::TlsStream<TcpStream>, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.accept_waiting(cx);
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => return Poll::Ready(Some(Ok(stream))),
                // Logged by the handshake task.
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(err))) => {
                    tracing::debug!(error = %err, "a peer TLS handshake task ended abnormally");
                }
                // No handshake in progress: the listener (or the backoff)
                // wakes us when there is something to do.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Accept errors that concern one connection only (it went away before we
/// took it), after which accepting goes straight on.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One accepted connection's TLS handshake; `None` (logged) if it failed.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %err, "could not set TCP_NODELAY on a peer connection");
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "peer TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "peer TLS handshake timed out");
            None
        }
    }
}

/// Why a peer TLS identity, configuration or connection could not be set
/// up.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    /// The identity key could not be written as PKCS#8 for the certificate.
    #[error("the identity key could not be encoded for TLS; log in again to recover it")]
    KeyEncoding(#[source] ed25519_dalek::pkcs8::Error),
    /// The self-signed certificate could not be made.
    #[error("no TLS certificate could be made from the identity key; log in again to recover it")]
    Certificate(#[source] rcgen::Error),
    /// rustls refused the settings or the key.
    #[error("the peer TLS settings were refused; this is a bug in Agora, please report it")]
    Config(#[source] rustls::Error),
    /// The seller's address is not `host:port`.
    #[error(
        "the seller address {addr:?} is not a valid host:port; the listing's endpoint is wrong"
    )]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why tonic rejected it.
        #[source]
        source: tonic::transport::Error,
    },
    /// No TCP connection to the seller (refused, no route, unknown host).
    #[error(
        "the seller at {addr} cannot be reached ({reason}); it may be offline, try again later"
    )]
    SellerUnreachable {
        /// The seller's address.
        addr: String,
        /// What went wrong, as the network stack said it.
        reason: String,
    },
    /// The seller did not complete TCP and TLS within [`CONNECT_TIMEOUT`].
    #[error(
        "the seller at {addr} did not answer within {} s; it may be offline or overloaded, try again later",
        CONNECT_TIMEOUT.as_secs()
    )]
    SellerTimedOut {
        /// The seller's address.
        addr: String,
    },
    /// The seller's certificate carries another key than the one the
    /// cluster has for it.
    #[error(
        "the seller at {addr} failed TLS: its key is not the one the cluster has for it, so nothing was fetched from it; the listing's endpoint may now belong to someone else"
    )]
    SellerKeyMismatch {
        /// The seller's address.
        addr: String,
    },
    /// The TLS handshake with the seller failed for another reason.
    #[error(
        "the seller at {addr} failed TLS ({reason}); it may not be an Agora peer, or its key is not the one the cluster has"
    )]
    SellerHandshake {
        /// The seller's address.
        addr: String,
        /// What rustls said.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    use agora_proto::peer::fetch_reply::Part;
    use agora_proto::peer::seller_service_client::SellerServiceClient;
    use agora_proto::peer::seller_service_server::{SellerService, SellerServiceServer};
    use agora_proto::peer::{Chunk, FetchReply, FetchRequest};
    use ed25519_dalek::SigningKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tonic::{Request, Response, Status};

    /// A deterministic identity key and its TLS identity.
    fn identity(seed: u8) -> (SigningKey, PeerIdentity) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let identity = PeerIdentity::from_signing_key(&key).expect("identity");
        (key, identity)
    }

    /// A seller whose Fetch answers with one chunk holding the caller's TLS
    /// key, as `peer_key_of` sees it.
    struct EchoPeerKey;

    #[tonic::async_trait]
    impl SellerService for EchoPeerKey {
        type FetchStream = tokio_stream::Once<Result<FetchReply, Status>>;

        async fn fetch(
            &self,
            request: Request<FetchRequest>,
        ) -> Result<Response<Self::FetchStream>, Status> {
            let key = peer_key_of(&request)
                .ok_or_else(|| Status::unauthenticated("no peer key on the request"))?;
            let reply = FetchReply {
                part: Some(Part::Chunk(Chunk {
                    index: 0,
                    ciphertext: key.to_vec().into(),
                })),
            };
            Ok(Response::new(tokio_stream::once(Ok(reply))))
        }
    }

    /// A running seller; dropping it shuts the server down.
    struct Seller {
        addr: SocketAddr,
        _shutdown: oneshot::Sender<()>,
    }

    async fn start_seller(identity: &PeerIdentity) -> Seller {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let config = server_config(identity).expect("server config");
        let (shutdown, stop) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SellerServiceServer::new(EchoPeerKey))
                .serve_with_incoming_shutdown(incoming(listener, config), async {
                    let _ = stop.await;
                }),
        );
        Seller {
            addr,
            _shutdown: shutdown,
        }
    }

    /// Fetches through `channel` and returns the key the seller saw.
    async fn key_seen_by_seller(channel: Channel) -> Vec<u8> {
        let mut stream = SellerServiceClient::new(channel)
            .fetch(FetchRequest::default())
            .await
            .expect("fetch")
            .into_inner();
        let reply = stream.message().await.expect("reply").expect("one reply");
        match reply.part {
            Some(Part::Chunk(chunk)) => chunk.ciphertext.to_vec(),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Accepts any server certificate: a client that skips every check, to
    /// show what the seller does on its own.
    #[derive(Debug)]
    struct AcceptAnyServer;

    impl ServerCertVerifier for AcceptAnyServer {
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
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    }

    #[tokio::test]
    async fn a_buyer_pinning_the_seller_key_is_seen_with_its_own_key() {
        let (_, seller) = identity(1);
        let (buyer_key, buyer) = identity(2);
        let server = start_seller(&seller).await;

        let config = client_config(&buyer, seller.public_key()).expect("client config");
        let channel = connect(&server.addr.to_string(), config)
            .await
            .expect("connect");

        let seen = key_seen_by_seller(channel).await;
        assert_eq!(seen, buyer_key.verifying_key().to_bytes());
    }

    #[tokio::test]
    async fn a_buyer_pinning_another_key_is_refused_at_connect() {
        let (_, seller) = identity(1);
        let (_, buyer) = identity(2);
        let (_, stranger) = identity(3);
        let server = start_seller(&seller).await;
        let addr = server.addr.to_string();

        let config = client_config(&buyer, stranger.public_key()).expect("client config");
        let err = connect(&addr, config)
            .await
            .expect_err("wrong key accepted");

        assert!(
            matches!(&err, PeerTlsError::SellerKeyMismatch { addr: a } if *a == addr),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&addr), "{message}");
        assert!(message.contains("not the one the cluster has"), "{message}");
    }

    #[tokio::test]
    async fn a_dead_seller_is_an_error_at_connect() {
        let (_, buyer) = identity(2);
        // Bound then dropped: nothing listens there any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("local addr")
            .to_string();

        let config = client_config(&buyer, [1; 32]).expect("client config");
        let err = connect(&addr, config).await.expect_err("nobody listens");

        assert!(
            matches!(&err, PeerTlsError::SellerUnreachable { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn a_seller_that_does_not_speak_tls_is_a_handshake_error() {
        let (_, buyer) = identity(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        // Takes each connection and hangs up at once.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });

        let config = client_config(&buyer, [1; 32]).expect("client config");
        let err = connect(&addr, config).await.expect_err("no TLS there");

        assert!(
            matches!(&err, PeerTlsError::SellerHandshake { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn a_client_without_certificate_is_refused_and_serving_goes_on() {
        let (_, seller) = identity(1);
        let (buyer_key, buyer) = identity(2);
        let server = start_seller(&seller).await;

        let mut anonymous = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
        let tcp = TcpStream::connect(server.addr).await.expect("tcp");
        // In TLS 1.3 the client's side of the handshake may complete before
        // the server has judged it; the refusal then arrives as an alert.
        let refused = match TlsConnector::from(Arc::new(anonymous))
            .connect(peer_server_name(), tcp)
            .await
        {
            Err(_) => true,
            Ok(mut tls) => {
                let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                let mut buf = [0_u8; 64];
                matches!(tls.read(&mut buf).await, Err(_) | Ok(0))
            }
        };
        assert!(refused, "the seller spoke to a client without certificate");

        let config = client_config(&buyer, seller.public_key()).expect("client config");
        let channel = connect(&server.addr.to_string(), config)
            .await
            .expect("the seller stopped serving after a refused client");
        assert_eq!(
            key_seen_by_seller(channel).await,
            buyer_key.verifying_key().to_bytes()
        );
    }

    #[tokio::test]
    async fn a_silent_connection_does_not_hold_up_others() {
        let (_, seller) = identity(1);
        let (buyer_key, buyer) = identity(2);
        let server = start_seller(&seller).await;

        // Connects and never says a word, its handshake pending for
        // HANDSHAKE_TIMEOUT.
        let _silent = TcpStream::connect(server.addr).await.expect("tcp");

        let config = client_config(&buyer, seller.public_key()).expect("client config");
        let channel = tokio::time::timeout(
            HANDSHAKE_TIMEOUT / 2,
            connect(&server.addr.to_string(), config),
        )
        .await
        .expect("blocked behind the silent connection")
        .expect("connect");
        assert_eq!(
            key_seen_by_seller(channel).await,
            buyer_key.verifying_key().to_bytes()
        );
    }

    #[test]
    fn certificate_key_is_the_identity_key() {
        let (key, identity) = identity(7);
        let expected = key.verifying_key().to_bytes();
        assert_eq!(identity.public_key(), expected);
        assert_eq!(certificate_key(identity.certificate()), Some(expected));
        assert_eq!(
            self_signed_ed25519_key(identity.certificate()).expect("valid"),
            expected
        );
    }

    #[test]
    fn certificate_key_is_none_for_other_certificates() {
        // rcgen's default key type is ECDSA P-256.
        let ecdsa = rcgen::generate_simple_self_signed(vec![PEER_SERVER_NAME.to_owned()])
            .expect("ecdsa cert");
        assert_eq!(certificate_key(ecdsa.cert.der()), None);
        assert_eq!(
            certificate_key(&CertificateDer::from(vec![0x30, 0x00])),
            None
        );
    }

    #[test]
    fn a_tampered_self_signature_is_refused() {
        let (_, identity) = identity(7);
        let mut der = identity.certificate().to_vec();
        // The signature is the last thing in the certificate.
        if let Some(last) = der.last_mut() {
            *last ^= 1;
        }
        let der = CertificateDer::from(der);
        assert!(certificate_key(&der).is_some(), "still parses");
        assert!(matches!(
            self_signed_ed25519_key(&der),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        ));
    }

    #[test]
    fn the_peer_server_name_is_valid() {
        let _ = peer_server_name();
    }

    #[test]
    fn debug_does_not_show_the_signing_key() {
        let (_, identity) = identity(7);
        let shown = format!("{identity:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains(&"07".repeat(32)), "{shown}");
    }
}
