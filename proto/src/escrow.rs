//! Chunk encryption for one purchase: the seller encrypts every chunk of the
//! file under a fresh per-purchase [`EscrowKey`], the buyer downloads the
//! ciphertext peer to peer, and the cluster holds the key in escrow until
//! the purchase settles.
//!
//! The cipher is AES-256-GCM. The nonce is the chunk index (4 zero bytes,
//! then the index big-endian) and the associated data is
//! `b"agora/chunk/v1" || purchase_id` (big-endian), so a chunk cannot be
//! moved to another position or another purchase without failing to
//! decrypt. A nonce never repeats under one key with different plaintext:
//! the key is never reused across purchases, and a chunk encrypted again
//! (a resumed download) comes out as the very same bytes. That determinism
//! is also what lets the seller commit to one ciphertext Merkle root per
//! sale (see [`ciphertext_leaf`]).
//!
//! Pure: no I/O, no clock; the only randomness is [`EscrowKey::generate`].

use std::fmt;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroize;

use crate::merkle;

/// Length of an [`EscrowKey`] in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Length of the GCM authentication tag appended to every encrypted chunk.
pub const TAG_LEN: usize = 16;

/// Domain prefix of the associated data, so a chunk ciphertext can never
/// pass for anything else encrypted under an escrow key.
const AAD_PREFIX: &[u8; 14] = b"agora/chunk/v1";

/// Length of the associated data: the prefix and the purchase id.
const AAD_LEN: usize = AAD_PREFIX.len() + 8;

/// The per-purchase AES-256-GCM key. Its `Debug` output is redacted and its
/// bytes are wiped when it is dropped, because it is the one secret that
/// separates a buyer who has paid from one who has not.
#[derive(Clone, PartialEq, Eq)]
pub struct EscrowKey([u8; KEY_LEN]);

impl EscrowKey {
    /// A fresh random key from the operating system's generator.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key with these bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key with these bytes, as received off the wire.
    ///
    /// # Errors
    /// [`EscrowError::BadKeyLength`] when `bytes` is not [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EscrowError> {
        let bytes =
            <[u8; KEY_LEN]>::try_from(bytes).map_err(|_| EscrowError::BadKeyLength(bytes.len()))?;
        Ok(Self(bytes))
    }

    /// The key's bytes, to hand to the cluster's escrow.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for EscrowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EscrowKey(<redacted>)")
    }
}

impl Drop for EscrowKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Encrypts and decrypts the chunks of one purchase. Built once per
/// purchase so the AES key schedule is expanded once, not once per chunk.
#[derive(Clone)]
pub struct ChunkCipher {
    /// The expanded key.
    cipher: Aes256Gcm,
    /// `AAD_PREFIX || purchase_id`, the same for every chunk.
    aad: [u8; AAD_LEN],
    /// Kept for `Debug` only; the AAD is what binds it.
    purchase_id: u64,
}

impl ChunkCipher {
    /// The cipher for the chunks of `purchase_id` under `key`.
    #[must_use]
    pub fn new(key: &EscrowKey, purchase_id: u64) -> Self {
        let mut aad = [0; AAD_LEN];
        aad[..AAD_PREFIX.len()].copy_from_slice(AAD_PREFIX);
        aad[AAD_PREFIX.len()..].copy_from_slice(&purchase_id.to_be_bytes());
        Self {
            cipher: Aes256Gcm::new(key.as_bytes().into()),
            aad,
            purchase_id,
        }
    }

    /// Encrypts `chunk` (plaintext chunk `index`) in place and appends the
    /// [`TAG_LEN`]-byte tag, so `chunk` grows to
    /// [`ciphertext_len`]`(plaintext length)`.
    ///
    /// # Panics
    /// Only if `chunk` is longer than GCM's limit of 64 GiB, which no valid
    /// chunk size comes near (see [`merkle::MAX_CHUNK_SIZE`]).
    pub fn encrypt_in_place(&self, index: u64, chunk: &mut Vec<u8>) {
        self.cipher
            .encrypt_in_place(&nonce(index), &self.aad, chunk)
            .expect("AES-GCM into a Vec fails only past 64 GiB, far above any chunk size");
    }

    /// Checks the tag of encrypted chunk `index` and decrypts it in place;
    /// the tag is removed, so `chunk` shrinks by [`TAG_LEN`].
    ///
    /// # Errors
    /// [`EscrowError::TooShort`] when `chunk` cannot even hold a tag, and
    /// [`EscrowError::Decrypt`] when the tag does not match (the chunk was
    /// altered, or belongs to another index, purchase or key). On an error
    /// the contents of `chunk` are unspecified: discard them.
    pub fn decrypt_in_place(&self, index: u64, chunk: &mut Vec<u8>) -> Result<(), EscrowError> {
        if chunk.len() < TAG_LEN {
            return Err(EscrowError::TooShort { index });
        }
        self.cipher
            .decrypt_in_place(&nonce(index), &self.aad, chunk)
            .map_err(|_| EscrowError::Decrypt { index })
    }
}

impl fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCipher")
            .field("purchase_id", &self.purchase_id)
            .finish_non_exhaustive()
    }
}

/// The nonce of chunk `index`: 4 zero bytes, then the index big-endian.
fn nonce(index: u64) -> Nonce<U12> {
    let mut bytes = [0; 12];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    bytes.into()
}

/// Length of an encrypted chunk for a plaintext chunk of `plain_len` bytes:
/// the plaintext plus the tag (saturating, so it never panics).
#[must_use]
pub fn ciphertext_len(plain_len: usize) -> usize {
    plain_len.saturating_add(TAG_LEN)
}

/// Length of plaintext chunk `index` of a file of `size` bytes cut into
/// chunks of `chunk_size`: `chunk_size`, except that the last chunk may be
/// short, and 0 for an index past the end (or a `chunk_size` of 0).
#[must_use]
pub fn plain_chunk_len(size: u64, chunk_size: u32, index: u64) -> usize {
    let Some(start) = index.checked_mul(u64::from(chunk_size)) else {
        return 0;
    };
    let len = size.saturating_sub(start).min(u64::from(chunk_size));
    // At most `chunk_size`, a u32, so it fits any usize Agora runs on.
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// The Merkle leaf of one encrypted chunk: the ciphertext root a seller
/// commits to for a sale is [`merkle::root`] over these, in chunk order.
/// The one place that says which hash the ciphertext tree uses.
#[must_use]
pub fn ciphertext_leaf(ciphertext: &[u8]) -> merkle::Hash {
    merkle::leaf_hash(ciphertext)
}

/// Why a key or a chunk was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EscrowError {
    /// A key of the wrong length.
    #[error(
        "an escrow key is 32 bytes (got {0}); pass the key exactly as the cluster released it"
    )]
    BadKeyLength(usize),
    /// The tag did not match.
    #[error(
        "chunk {index} does not decrypt under the purchase key: it was changed, or belongs to \
         another purchase; download it again"
    )]
    Decrypt {
        /// The chunk's index.
        index: u64,
    },
    /// Fewer bytes than a tag.
    #[error(
        "chunk {index} is shorter than its 16-byte authentication tag, so it was cut off; \
         download it again"
    )]
    TooShort {
        /// The chunk's index.
        index: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, Payload};
    use proptest::prelude::*;

    fn key(byte: u8) -> EscrowKey {
        EscrowKey::from_bytes([byte; KEY_LEN])
    }

    /// `len` bytes that are not all alike.
    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).flat_map(usize::to_le_bytes).take(len).collect()
    }

    fn encrypted(key: &EscrowKey, purchase_id: u64, index: u64, plain: &[u8]) -> Vec<u8> {
        let mut chunk = plain.to_vec();
        ChunkCipher::new(key, purchase_id).encrypt_in_place(index, &mut chunk);
        chunk
    }

    #[test]
    fn round_trips_at_many_sizes() {
        let cipher = ChunkCipher::new(&key(1), 42);
        for len in [0, 1, 15, 16, 17, 31, 4095, 4096, 4097, 65_536] {
            let plain = plaintext(len);
            let mut chunk = plain.clone();
            cipher.encrypt_in_place(7, &mut chunk);
            assert_eq!(chunk.len(), ciphertext_len(len));
            assert_eq!(chunk.len(), len + TAG_LEN);
            if len > 0 {
                assert_ne!(&chunk[..len], &plain[..], "len {len} left in the clear");
            }
            cipher.decrypt_in_place(7, &mut chunk).expect("round trip");
            assert_eq!(chunk, plain, "len {len}");
        }
    }

    #[test]
    fn matches_the_specified_nonce_and_associated_data() {
        // Written out independently of `ChunkCipher`, so a refactor that
        // changes the construction (and so every ciphertext root) fails here.
        let key =
            EscrowKey::from_bytes(core::array::from_fn(|i| u8::try_from(i).expect("under 32")));
        let (purchase_id, index) = (0x0102_0304_0506_0708_u64, 0x1122_3344_5566_7788_u64);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&index.to_be_bytes());
        let mut aad = b"agora/chunk/v1".to_vec();
        aad.extend_from_slice(&purchase_id.to_be_bytes());
        let plain = plaintext(100);
        let expected = Aes256Gcm::new(key.as_bytes().into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("encrypts");
        assert_eq!(encrypted(&key, purchase_id, index, &plain), expected);
    }

    #[test]
    fn encryption_is_deterministic() {
        let plain = plaintext(1000);
        let first = encrypted(&key(1), 9, 3, &plain);
        // A new cipher for the same purchase (a resumed download) agrees.
        assert_eq!(first, encrypted(&key(1), 9, 3, &plain));
        let cipher = ChunkCipher::new(&key(1), 9);
        let (mut a, mut b) = (plain.clone(), plain);
        cipher.encrypt_in_place(3, &mut a);
        cipher.encrypt_in_place(3, &mut b);
        assert_eq!((&a, &b), (&first, &first));
    }

    #[test]
    fn another_index_purchase_or_key_does_not_decrypt() {
        let chunk = encrypted(&key(1), 9, 3, &plaintext(100));
        for (cipher, index) in [
            (ChunkCipher::new(&key(1), 9), 4),
            (ChunkCipher::new(&key(1), 10), 3),
            (ChunkCipher::new(&key(2), 9), 3),
        ] {
            let mut attempt = chunk.clone();
            assert_eq!(
                cipher.decrypt_in_place(index, &mut attempt),
                Err(EscrowError::Decrypt { index })
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let cipher = ChunkCipher::new(&key(1), 9);
        let chunk = encrypted(&key(1), 9, 0, &plaintext(20));
        for bit in 0..chunk.len() * 8 {
            let mut tampered = chunk.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                cipher.decrypt_in_place(0, &mut tampered),
                Err(EscrowError::Decrypt { index: 0 }),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn truncated_chunks_are_refused() {
        let cipher = ChunkCipher::new(&key(1), 9);
        for len in 0..TAG_LEN {
            let mut short = vec![0; len];
            assert_eq!(
                cipher.decrypt_in_place(5, &mut short),
                Err(EscrowError::TooShort { index: 5 })
            );
        }
        // Exactly a tag is the encryption of an empty chunk; a real chunk
        // missing its last byte fails authentication.
        let mut empty = encrypted(&key(1), 9, 5, &[]);
        assert_eq!(empty.len(), TAG_LEN);
        assert_eq!(cipher.decrypt_in_place(5, &mut empty), Ok(()));
        assert!(empty.is_empty());
        let mut cut = encrypted(&key(1), 9, 5, &plaintext(100));
        cut.pop();
        assert_eq!(
            cipher.decrypt_in_place(5, &mut cut),
            Err(EscrowError::Decrypt { index: 5 })
        );
    }

    #[test]
    fn keys() {
        let key = EscrowKey::generate();
        assert_ne!(key, EscrowKey::generate());
        assert_eq!(EscrowKey::from_slice(key.as_bytes()), Ok(key.clone()));
        assert_eq!(
            EscrowKey::from_slice(&[0; 31]),
            Err(EscrowError::BadKeyLength(31))
        );
        assert_eq!(
            EscrowKey::from_slice(&[0; 33]),
            Err(EscrowError::BadKeyLength(33))
        );
        assert!(EscrowError::BadKeyLength(31)
            .to_string()
            .starts_with("an escrow key is 32 bytes (got 31)"));
        assert_eq!(format!("{key:?}"), "EscrowKey(<redacted>)");
        assert_eq!(
            format!("{:?}", ChunkCipher::new(&key, 5)),
            "ChunkCipher { purchase_id: 5, .. }"
        );
    }

    #[test]
    fn chunk_lengths() {
        // 10_000 bytes in 4096-byte chunks: 4096, 4096, 1808.
        assert_eq!(plain_chunk_len(10_000, 4096, 0), 4096);
        assert_eq!(plain_chunk_len(10_000, 4096, 1), 4096);
        assert_eq!(plain_chunk_len(10_000, 4096, 2), 1808);
        assert_eq!(plain_chunk_len(10_000, 4096, 3), 0);
        assert_eq!(plain_chunk_len(8192, 4096, 1), 4096);
        assert_eq!(plain_chunk_len(8192, 4096, 2), 0);
        assert_eq!(plain_chunk_len(0, 4096, 0), 0);
        assert_eq!(plain_chunk_len(10, 0, 0), 0);
        assert_eq!(plain_chunk_len(u64::MAX, 4096, u64::MAX), 0);
        assert_eq!(plain_chunk_len(u64::MAX, 4096, u64::MAX / 4096), 4095);
        assert_eq!(ciphertext_len(0), TAG_LEN);
        assert_eq!(ciphertext_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn ciphertext_leaf_is_the_merkle_leaf() {
        let chunk = encrypted(&key(1), 9, 0, &plaintext(100));
        assert_eq!(ciphertext_leaf(&chunk), merkle::leaf_hash(&chunk));
    }

    proptest! {
        #[test]
        fn round_trip(
            key_bytes in any::<[u8; KEY_LEN]>(),
            purchase_id in any::<u64>(),
            index in any::<u64>(),
            plain in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            let cipher = ChunkCipher::new(&EscrowKey::from_bytes(key_bytes), purchase_id);
            let mut chunk = plain.clone();
            cipher.encrypt_in_place(index, &mut chunk);
            prop_assert_eq!(chunk.len(), ciphertext_len(plain.len()));
            cipher.decrypt_in_place(index, &mut chunk).expect("round trip");
            prop_assert_eq!(chunk, plain);
        }

        #[test]
        fn chunks_cover_the_file(size in 0u64..1 << 40, shift in 12u32..23) {
            let chunk_size = 1u32 << shift;
            let count = merkle::chunk_count(size, chunk_size);
            prop_assert_eq!(plain_chunk_len(size, chunk_size, count), 0);
            if count > 0 {
                let last = plain_chunk_len(size, chunk_size, count - 1);
                prop_assert!(last > 0);
                prop_assert_eq!((count - 1) * u64::from(chunk_size) + last as u64, size);
            }
            if count > 1 {
                let before_last = plain_chunk_len(size, chunk_size, count - 2);
                prop_assert_eq!(before_last, chunk_size as usize);
            }
        }
    }
}
