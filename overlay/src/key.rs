//! The cluster key and the authenticated encryption of gossip packets.
//!
//! Every gossip datagram is sealed with XChaCha20-Poly1305 under a 256-bit
//! key derived (BLAKE3 `derive_key`) from the cluster key file:
//!
//! ```text
//! +---------+------------------+----------------------+-----------+
//! | version | nonce (24 bytes) | ciphertext           | tag (16)  |
//! +---------+------------------+----------------------+-----------+
//! ```
//!
//! The version byte is bound into the tag as associated data. A packet that
//! fails authentication is an [`AuthError`]; nothing of it is used.
//!
//! Nonces come from a [`NonceSequence`]: a 16-byte prefix unique to one
//! running instance followed by a 64-bit counter, so a nonce never repeats
//! under one key as long as no two instances share a prefix. The prefix is
//! derived from a caller-supplied seed (random in production) and the
//! instance's identity (name, boot generation, address), so even a reused
//! seed does not repeat nonces across members or restarts.

use std::fmt;

use chacha20poly1305::aead::{inout::InOutBuf, AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// The first byte of every sealed packet.
pub const VERSION: u8 = 1;

/// Length of the nonce.
pub const NONCE_LEN: usize = 24;

/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;

/// Bytes sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The shortest passphrase accepted in a key file.
pub const MIN_PASSPHRASE_LEN: usize = 16;

const KDF_CONTEXT: &str = "vswitch 2025-01 gossip cluster key v1";
const NONCE_CONTEXT: &str = "vswitch 2025-01 gossip nonce prefix v1";
const AAD: &[u8] = b"vswitch-gossip";

/// Why a key file could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The file is empty or only whitespace.
    #[error("the cluster key file is empty; put 32 random bytes, 64 hex digits or a passphrase of at least 16 characters in it")]
    Empty,
    /// A passphrase too short to resist guessing.
    #[error("the cluster key passphrase has {0} characters; use at least 16, or 64 hex digits (for example from `head -c 32 /dev/urandom | xxd -p -c 64`)")]
    WeakPassphrase(usize),
}

/// A packet that is not a valid sealed packet under this key: too short,
/// an unknown version, or a tag that does not match (tampered, or sealed
/// with another key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gossip packet failed authentication")]
pub struct AuthError;

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The output buffer cannot hold the plaintext plus [`SEAL_OVERHEAD`].
    #[error("buffer too small for a sealed gossip packet")]
    BufferTooSmall,
    /// The nonce counter is exhausted (2^64 packets).
    #[error("nonce sequence exhausted")]
    NoncesExhausted,
}

/// The cluster's shared secret, ready to seal and open gossip packets.
#[derive(Clone)]
pub struct ClusterKey {
    key: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKey")
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint()))
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        // Comparing public fingerprints avoids a timing side channel on the
        // key bytes themselves.
        blake3::hash(&self.key) == blake3::hash(&other.key)
    }
}

impl Eq for ClusterKey {}

impl ClusterKey {
    /// The key from a key file's contents. Accepted forms:
    /// - exactly 32 bytes (raw key material);
    /// - 64 hexadecimal digits, surrounding whitespace ignored;
    /// - any other text: a passphrase (surrounding whitespace ignored) of at
    ///   least [`MIN_PASSPHRASE_LEN`] bytes.
    ///
    /// The cipher key is always derived with BLAKE3 `derive_key`, so the same
    /// 32 bytes given raw or as hex make the same key.
    pub fn from_file_bytes(contents: &[u8]) -> Result<ClusterKey, KeyError> {
        let trimmed = contents.trim_ascii();
        if trimmed.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some(raw) = decode_hex_32(trimmed) {
            return Ok(Self::from_material(&raw));
        }
        if contents.len() == 32 {
            return Ok(Self::from_material(contents));
        }
        if trimmed.len() < MIN_PASSPHRASE_LEN {
            return Err(KeyError::WeakPassphrase(trimmed.len()));
        }
        Ok(Self::from_material(trimmed))
    }

    /// The key derived from arbitrary secret material (no length check).
    pub fn from_material(material: &[u8]) -> ClusterKey {
        let key = blake3::derive_key(KDF_CONTEXT, material);
        ClusterKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
            key,
        }
    }

    /// A public 64-bit fingerprint of the key, for logs and for checking
    /// that two hosts were given the same file.
    pub fn fingerprint(&self) -> u64 {
        let h = blake3::keyed_hash(&self.key, b"fingerprint");
        let b = h.as_bytes();
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Seals `plain` into `out` with the next nonce of `nonces`; returns the
    /// length of the sealed packet (`plain.len() + SEAL_OVERHEAD`).
    pub fn seal(
        &self,
        nonces: &mut NonceSequence,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let len = plain.len() + SEAL_OVERHEAD;
        let Some(out) = out.get_mut(..len) else {
            return Err(SealError::BufferTooSmall);
        };
        let nonce = nonces.next_nonce().ok_or(SealError::NoncesExhausted)?;
        let (head, rest) = out.split_at_mut(1 + NONCE_LEN);
        head[0] = VERSION;
        head[1..].copy_from_slice(&nonce);
        let (body, tag_out) = rest.split_at_mut(plain.len());
        let inout = InOutBuf::new(plain, body).map_err(|_| SealError::BufferTooSmall)?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&XNonce::from(nonce), &aad(VERSION), inout)
            .map_err(|_| SealError::BufferTooSmall)?;
        tag_out.copy_from_slice(&tag);
        Ok(len)
    }

    /// Opens a sealed packet into `out`; returns the plaintext length.
    /// `out` must hold `packet.len() - SEAL_OVERHEAD` bytes.
    pub fn open(&self, packet: &[u8], out: &mut [u8]) -> Result<usize, AuthError> {
        if packet.len() < SEAL_OVERHEAD || packet[0] != VERSION {
            return Err(AuthError);
        }
        let nonce = XNonce::try_from(&packet[1..1 + NONCE_LEN]).map_err(|_| AuthError)?;
        let body = &packet[1 + NONCE_LEN..packet.len() - TAG_LEN];
        let tag = Tag::try_from(&packet[packet.len() - TAG_LEN..]).map_err(|_| AuthError)?;
        let Some(out) = out.get_mut(..body.len()) else {
            return Err(AuthError);
        };
        let inout = InOutBuf::new(body, out).map_err(|_| AuthError)?;
        match self
            .cipher
            .decrypt_inout_detached(&nonce, &aad(packet[0]), inout, &tag)
        {
            Ok(()) => Ok(body.len()),
            Err(_) => {
                // Leave no unauthenticated plaintext behind.
                out.fill(0);
                Err(AuthError)
            }
        }
    }
}

fn aad(version: u8) -> [u8; AAD.len() + 1] {
    let mut a = [0u8; AAD.len() + 1];
    a[..AAD.len()].copy_from_slice(AAD);
    a[AAD.len()] = version;
    a
}

fn decode_hex_32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Nonces for one running instance: a 16-byte prefix and a counter.
#[derive(Clone)]
pub struct NonceSequence {
    prefix: [u8; 16],
    counter: u64,
}

impl fmt::Debug for NonceSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSequence")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl NonceSequence {
    /// A sequence whose prefix is derived from `seed` (random in
    /// production) and `instance`, bytes that differ between instances
    /// sharing the key (name, boot generation, address).
    pub fn new(seed: u64, instance: &[u8]) -> NonceSequence {
        let mut h = blake3::Hasher::new_derive_key(NONCE_CONTEXT);
        h.update(&seed.to_le_bytes());
        h.update(instance);
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&h.finalize().as_bytes()[..16]);
        NonceSequence { prefix, counter: 0 }
    }

    /// The next nonce, or `None` once 2^64 have been used.
    pub fn next_nonce(&mut self) -> Option<[u8; NONCE_LEN]> {
        let n = self.counter;
        self.counter = self.counter.checked_add(1)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&n.to_le_bytes());
        Some(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn raw() -> Vec<u8> {
        (0u8..32).collect()
    }

    fn seal_vec(key: &ClusterKey, nonces: &mut NonceSequence, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plain.len() + SEAL_OVERHEAD];
        let n = key.seal(nonces, plain, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[rstest]
    #[case::raw_bytes(raw(), true)]
    #[case::hex(HEX.as_bytes().to_vec(), true)]
    #[case::hex_newline(format!("{HEX}\n").into_bytes(), true)]
    #[case::hex_upper(HEX.to_uppercase().into_bytes(), true)]
    #[case::passphrase(b"correct horse battery staple\n".to_vec(), false)]
    fn key_file_forms(#[case] contents: Vec<u8>, #[case] same_as_raw: bool) {
        let key = ClusterKey::from_file_bytes(&contents).unwrap();
        let reference = ClusterKey::from_file_bytes(&raw()).unwrap();
        assert_eq!(key == reference, same_as_raw);
    }

    #[rstest]
    #[case::empty(b"", KeyError::Empty)]
    #[case::blank(b"  \n\t", KeyError::Empty)]
    #[case::short(b"hunter2\n", KeyError::WeakPassphrase(7))]
    fn bad_key_files(#[case] contents: &[u8], #[case] expected: KeyError) {
        assert_eq!(ClusterKey::from_file_bytes(contents), Err(expected));
    }

    #[test]
    fn passphrase_whitespace_is_trimmed() {
        let a = ClusterKey::from_file_bytes(b"a long cluster passphrase").unwrap();
        let b = ClusterKey::from_file_bytes(b"  a long cluster passphrase\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn seal_open_roundtrip() {
        let key = ClusterKey::from_material(b"k");
        let mut nonces = NonceSequence::new(1, b"a");
        for plain in [&b""[..], b"x", &[7u8; 1300]] {
            let sealed = seal_vec(&key, &mut nonces, plain);
            assert_eq!(sealed[0], VERSION);
            let mut out = vec![0u8; sealed.len()];
            let n = key.open(&sealed, &mut out).unwrap();
            assert_eq!(&out[..n], plain);
        }
    }

    #[test]
    fn nonces_never_repeat() {
        let key = ClusterKey::from_material(b"k");
        let mut nonces = NonceSequence::new(1, b"a");
        let a = seal_vec(&key, &mut nonces, b"same");
        let b = seal_vec(&key, &mut nonces, b"same");
        assert_ne!(a, b);
        // Same seed, different instance: different prefix.
        let mut other = NonceSequence::new(1, b"b");
        assert_ne!(NonceSequence::new(1, b"a").next_nonce(), other.next_nonce());
    }

    #[test]
    fn tampering_is_an_auth_error() {
        let key = ClusterKey::from_material(b"k");
        let mut nonces = NonceSequence::new(9, b"a");
        let sealed = seal_vec(&key, &mut nonces, b"membership update");
        let mut out = vec![0u8; sealed.len()];
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert_eq!(key.open(&bad, &mut out), Err(AuthError), "byte {i}");
                assert!(out.iter().all(|&b| b == 0));
            }
        }
        assert_eq!(
            key.open(&sealed[..sealed.len() - 1], &mut out),
            Err(AuthError)
        );
        assert_eq!(
            key.open(&sealed[..SEAL_OVERHEAD - 1], &mut out),
            Err(AuthError)
        );
    }

    #[test]
    fn wrong_key_is_an_auth_error() {
        let key = ClusterKey::from_file_bytes(HEX.as_bytes()).unwrap();
        let other = ClusterKey::from_file_bytes(b"some other cluster passphrase").unwrap();
        let mut nonces = NonceSequence::new(3, b"a");
        let sealed = seal_vec(&key, &mut nonces, b"hello");
        let mut out = [0u8; 64];
        assert_eq!(other.open(&sealed, &mut out), Err(AuthError));
        assert!(key.open(&sealed, &mut out).is_ok());
    }

    #[test]
    fn small_buffers_are_errors() {
        let key = ClusterKey::from_material(b"k");
        let mut nonces = NonceSequence::new(3, b"a");
        let mut out = [0u8; SEAL_OVERHEAD + 4];
        assert_eq!(
            key.seal(&mut nonces, b"hello", &mut out),
            Err(SealError::BufferTooSmall)
        );
        let sealed = seal_vec(&key, &mut nonces, b"hello");
        let mut small = [0u8; 4];
        assert_eq!(key.open(&sealed, &mut small), Err(AuthError));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = ClusterKey::from_material(b"k");
        let text = format!("{key:?}");
        assert!(text.contains("fingerprint"));
        assert!(!text.contains(&format!("{:?}", key.key)));
    }
}
