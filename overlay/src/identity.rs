//! Host identities for QUIC tunnels, trusted through gossip.
//!
//! Each host has its own key pair (ECDSA P-256) and a self-signed
//! certificate, made once and kept by the daemon. The certificate's
//! [`Fingerprint`] (BLAKE3 of its DER encoding) travels in the member's
//! gossip metadata, which the cluster key authenticates. A QUIC peer is
//! accepted only if the certificate it presents has the fingerprint of a
//! live member: the [`TrustSet`]. Both sides check (mutual TLS), so there
//! is no certificate authority to run and no certificate to copy by hand:
//! knowing the cluster key is what lets a host publish its fingerprint,
//! and holding the private key is what lets it present the certificate.
//!
//! The certificate's names, dates and issuer are not looked at: the pin is
//! the whole certificate. The handshake's signature is still verified with
//! the certificate's public key (rustls with the `ring` provider), so a
//! host that copied a member's certificate but not its key cannot pass.
//!
//! Nothing here reads files or sockets: the daemon stores
//! [`Identity::to_pem`] and hands [`Identity::server_config`] and
//! [`Identity::client_config`] to its QUIC endpoint.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The ALPN protocol both ends of a vswitch QUIC tunnel offer.
pub const ALPN: &[u8] = b"vswitch-overlay/1";

/// The name a client asks for; certificates are pinned, so it only has to
/// be a valid DNS name.
pub const SERVER_NAME: &str = "vswitch";

/// The gossip tag that carries a member's certificate fingerprint.
pub const CERT_TAG: &str = "cert";

const RESET_KEY_CONTEXT: &str = "vswitch 2026-11 quic stateless reset key v1";

/// Why an identity could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or certificate generation failed.
    #[error("generating the host certificate")]
    Generate(#[source] rcgen::Error),
    /// The stored identity is not a PEM certificate followed by a PKCS#8
    /// private key.
    #[error("the identity file is not a PEM certificate and PKCS#8 private key: {0}")]
    Pem(&'static str),
    /// The stored key does not go with the stored certificate, or rustls
    /// refused the configuration.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// Why a fingerprint could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// Not 64 characters.
    #[error("a certificate fingerprint has 64 hex digits, not {0} characters")]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("a certificate fingerprint has only hex digits")]
    NotHex,
}

/// BLAKE3 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(certificate_der: &[u8]) -> Fingerprint {
        Fingerprint(*blake3::hash(certificate_der).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Fingerprint, FingerprintError> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(FingerprintError::Length(s.len()));
        }
        let digit = |c: u8| -> Result<u8, FingerprintError> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(FingerprintError::NotHex),
            }
        };
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Ok(Fingerprint(out))
    }
}

/// The fingerprints of the hosts a QUIC endpoint accepts: shared between
/// the control plane, which replaces it when membership changes, and the
/// TLS verifiers, which read it at every handshake without a lock.
#[derive(Clone, Default)]
pub struct TrustSet(Arc<ArcSwap<HashSet<Fingerprint>>>);

impl TrustSet {
    /// An empty set: nobody is trusted yet.
    pub fn new() -> TrustSet {
        TrustSet::default()
    }

    /// Trusts exactly `fingerprints` from now on. Connections already made
    /// are not affected; the caller closes those it no longer wants.
    pub fn replace(&self, fingerprints: impl IntoIterator<Item = Fingerprint>) {
        self.0.store(Arc::new(fingerprints.into_iter().collect()));
    }

    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.0.load().contains(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }
}

impl fmt::Debug for TrustSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.load().iter()).finish()
    }
}

/// A host's key pair and self-signed certificate.
pub struct Identity {
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            certificate: self.certificate.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// A new key pair and a certificate for it; `name` goes into the
    /// certificate's subject, for people reading it.
    pub fn generate(name: &str) -> Result<Identity, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(IdentityError::Generate)?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(IdentityError::Generate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("vswitch host {name}"));
        let certificate = params.self_signed(&key).map_err(IdentityError::Generate)?;
        Identity::from_parts(
            certificate.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
    }

    fn from_parts(
        certificate: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Identity, IdentityError> {
        let identity = Identity {
            fingerprint: Fingerprint::of(&certificate),
            certificate,
            key,
        };
        // Refuses a key that does not go with the certificate.
        identity.server_config(&TrustSet::new())?;
        Ok(identity)
    }

    /// Reads what [`Identity::to_pem`] wrote.
    pub fn from_pem(text: &str) -> Result<Identity, IdentityError> {
        let certificate = CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|_| IdentityError::Pem("no CERTIFICATE section"))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
            .map_err(|_| IdentityError::Pem("no PRIVATE KEY (PKCS#8) section"))?;
        Identity::from_parts(certificate, key)
    }

    /// The certificate and the private key, PEM-encoded: for a file only
    /// the daemon can read.
    pub fn to_pem(&self) -> String {
        let cert = pem_block("CERTIFICATE", &self.certificate);
        let key = pem_block("PRIVATE KEY", self.key.secret_pkcs8_der());
        format!("{cert}{key}")
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// 32 bytes derived from the private key, for the QUIC stateless reset
    /// key: the same after a restart, so a restarted host can tell its
    /// peers at once that their old connections to it are gone.
    pub fn reset_key_seed(&self) -> [u8; 32] {
        blake3::derive_key(RESET_KEY_CONTEXT, self.key.secret_pkcs8_der())
    }

    fn verifier(trust: &TrustSet) -> Arc<PinnedVerifier> {
        Arc::new(PinnedVerifier {
            trust: trust.clone(),
            algorithms: provider().signature_verification_algorithms,
        })
    }

    /// TLS 1.3 server side: presents this certificate, requires a client
    /// certificate in `trust`.
    pub fn server_config(&self, trust: &TrustSet) -> Result<rustls::ServerConfig, IdentityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(IdentityError::Tls)?
            .with_client_cert_verifier(Identity::verifier(trust))
            .with_single_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(IdentityError::Tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No resumption: a resumed session skips the certificate check, and
        // a host that left the trust set must not come back that way.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// TLS 1.3 client side: presents this certificate, requires a server
    /// certificate in `trust`.
    pub fn client_config(&self, trust: &TrustSet) -> Result<rustls::ClientConfig, IdentityError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(IdentityError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Identity::verifier(trust))
            .with_client_auth_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(IdentityError::Tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

/// The fingerprint of the certificate a peer presented (the first of the
/// chain rustls hands over after a handshake).
pub fn peer_fingerprint(chain: &[CertificateDer<'_>]) -> Option<Fingerprint> {
    chain.first().map(|c| Fingerprint::of(c))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Accepts exactly the certificates whose fingerprint is in the trust set,
/// as a server (client certificates) and as a client (server
/// certificates); handshake signatures are verified as usual.
#[derive(Debug)]
struct PinnedVerifier {
    trust: TrustSet,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        // A member presents its one self-signed certificate, nothing else.
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        if self.trust.contains(&Fingerprint::of(end_entity)) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered (QUIC needs it).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// Runs a TLS 1.3 handshake in memory; returns the fingerprints each
    /// side saw (client's view of the server, server's view of the client).
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(Fingerprint, Fingerprint), rustls::Error> {
        let mut c = rustls::ClientConnection::new(
            Arc::new(client),
            ServerName::try_from(SERVER_NAME).expect("valid name"),
        )?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        // Bounded: a TLS 1.3 handshake takes a handful of flights.
        for _ in 0..16 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("to memory");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).expect("from memory");
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("to memory");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("from memory");
                c.process_new_packets()?;
            }
        }
        assert!(
            !c.is_handshaking() && !s.is_handshaking(),
            "handshake stalled"
        );
        let seen_server =
            peer_fingerprint(c.peer_certificates().expect("server cert")).expect("one certificate");
        let seen_client =
            peer_fingerprint(s.peer_certificates().expect("client cert")).expect("one certificate");
        Ok((seen_server, seen_client))
    }

    fn trusting(ids: &[&Identity]) -> TrustSet {
        let t = TrustSet::new();
        t.replace(ids.iter().map(|i| i.fingerprint()));
        t
    }

    #[test]
    fn mutual_trust_passes_and_each_side_sees_the_other() {
        let (a, b) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
        );
        let (ta, tb) = (trusting(&[&b]), trusting(&[&a]));
        let (seen_server, seen_client) =
            handshake(a.client_config(&ta).unwrap(), b.server_config(&tb).unwrap())
                .expect("both trusted");
        assert_eq!(seen_server, b.fingerprint());
        assert_eq!(seen_client, a.fingerprint());
    }

    #[rstest]
    #[case::server_does_not_trust_the_client(false, true)]
    #[case::client_does_not_trust_the_server(true, false)]
    #[case::nobody_trusts_anybody(false, false)]
    fn an_unknown_certificate_fails(#[case] server_trusts: bool, #[case] client_trusts: bool) {
        let (a, b, other) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
            Identity::generate("other").unwrap(),
        );
        // Each side trusts either its peer or a third host.
        let ta = trusting(&[if client_trusts { &b } else { &other }]);
        let tb = trusting(&[if server_trusts { &a } else { &other }]);
        let err = handshake(a.client_config(&ta).unwrap(), b.server_config(&tb).unwrap())
            .expect_err("an untrusted certificate");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_client_without_a_certificate_fails() {
        let (a, b) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
        );
        let tb = trusting(&[&a]);
        let ta = trusting(&[&b]);
        let mut anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Identity::verifier(&ta))
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        let err =
            handshake(anonymous, b.server_config(&tb).unwrap()).expect_err("no client certificate");
        assert!(
            matches!(
                err,
                rustls::Error::NoCertificatesPresented | rustls::Error::AlertReceived(_)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_copied_certificate_without_its_key_fails() {
        let (a, b, thief) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
            Identity::generate("thief").unwrap(),
        );
        // The thief presents a's certificate with its own key.
        let forged = Identity {
            certificate: a.certificate.clone(),
            key: thief.key.clone_key(),
            fingerprint: a.fingerprint,
        };
        let ta = trusting(&[&b]);
        let tb = trusting(&[&a]);
        let client = forged.client_config(&ta);
        // rustls may refuse the mismatched pair at once; if it does not,
        // the handshake signature does not verify.
        if let Ok(client) = client {
            handshake(client, b.server_config(&tb).unwrap()).expect_err("wrong key");
        }
        assert!(Identity::from_parts(a.certificate.clone(), thief.key.clone_key()).is_err());
    }

    #[test]
    fn the_trust_set_updates_take_effect_at_the_next_handshake() {
        let (a, b) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
        );
        let ta = trusting(&[&b]);
        let tb = TrustSet::new();
        let server = b.server_config(&tb).unwrap();
        let client = a.client_config(&ta).unwrap();
        assert!(tb.is_empty());
        assert!(
            handshake(client.clone(), server.clone()).is_err(),
            "empty set"
        );
        tb.replace([a.fingerprint()]);
        assert_eq!(tb.len(), 1);
        assert!(handshake(client.clone(), server.clone()).is_ok(), "a added");
        tb.replace([]);
        assert!(handshake(client, server).is_err(), "a removed");
    }

    #[test]
    fn pem_round_trip_keeps_the_identity() {
        let a = Identity::generate("a").unwrap();
        let pem = a.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.contains("-----BEGIN PRIVATE KEY-----\n"));
        let back = Identity::from_pem(&pem).unwrap();
        assert_eq!(back.fingerprint(), a.fingerprint());
        assert_eq!(back.certificate_der(), a.certificate_der());
        assert_eq!(back.reset_key_seed(), a.reset_key_seed());
        // Another identity has another fingerprint and reset key.
        let b = Identity::generate("a").unwrap();
        assert_ne!(b.fingerprint(), a.fingerprint());
        assert_ne!(b.reset_key_seed(), a.reset_key_seed());
        // The private key never shows in debug output.
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[rstest]
    #[case::empty("")]
    #[case::garbage("not pem at all")]
    #[case::certificate_only("cert-only")]
    fn bad_pem_is_refused(#[case] text: &str) {
        let text = if text == "cert-only" {
            let a = Identity::generate("a").unwrap();
            pem_block("CERTIFICATE", a.certificate_der())
        } else {
            text.to_string()
        };
        assert!(matches!(
            Identity::from_pem(&text),
            Err(IdentityError::Pem(_))
        ));
    }

    #[test]
    fn the_gossip_tags_fit_in_member_metadata() {
        // The longest host name, IPv6 addresses, the fingerprint and a
        // QUIC port: still within what gossip carries.
        let v6: std::net::SocketAddr = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        let meta = crate::MemberMeta {
            name: "h".repeat(64),
            gossip_addr: v6,
            tunnel_addr: v6,
            tags: [
                (
                    CERT_TAG.to_string(),
                    Identity::generate("a").unwrap().fingerprint().to_string(),
                ),
                ("quic".to_string(), "65535".to_string()),
            ]
            .into(),
        };
        let len = postcard::to_stdvec(&meta).unwrap().len();
        assert!(len <= crate::gossip::MAX_META_LEN, "{len} bytes");
    }

    #[test]
    fn fingerprints_print_and_parse() {
        let a = Identity::generate("a").unwrap();
        let fp = a.fingerprint();
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(hex.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            "abc".parse::<Fingerprint>(),
            Err(FingerprintError::Length(3))
        );
        assert_eq!(
            "g".repeat(64).parse::<Fingerprint>(),
            Err(FingerprintError::NotHex)
        );
        assert_eq!(fp, Fingerprint::of(a.certificate_der()));
    }
}
