//! Dispute evidence off the wire: [`dispute::decode`] on arbitrary bytes,
//! then [`dispute::judge`] against a fixed honest sale.
//!
//! Properties checked, besides "never panics":
//!
//! - decoding is canonical: whatever decodes encodes back to the same bytes;
//! - an honest seller is never found at fault: against an honest sale every
//!   judgement is a refusal, whatever the evidence.
//!
//! Random bytes rarely get past the decoder, and never past the Merkle
//! checks, so each input is also applied as damage to real evidence for
//! one of the sale's chunks (see [`damaged`]): that reaches the proof checks
//! and the decryption with no seed corpus.

#![no_main]

use std::sync::OnceLock;

use agora_proto::dispute::{self, Case};
use agora_proto::escrow::{self, ChunkCipher, EscrowKey};
use agora_proto::merkle::{self, Hash};
use libfuzzer_sys::fuzz_target;

/// The chunk size of the honest sale: the smallest allowed, to keep it fast.
const CHUNK_SIZE: u32 = merkle::MIN_CHUNK_SIZE;

/// Three full chunks and a short last one.
const SIZE: u64 = 3 * CHUNK_SIZE as u64 + 100;

/// The purchase the honest sale is.
const PURCHASE_ID: u64 = 42;

/// One honest sale, as the cluster records it, and real evidence (encoded)
/// for each of its chunks.
struct HonestSale {
    /// The key the seller deposited (and encrypted with).
    key: EscrowKey,
    /// The root over the ciphertext chunks the seller sent.
    ciphertext_root: Hash,
    /// The listing's root.
    plaintext_root: Hash,
    /// Encoded evidence for every chunk: each one refused as good.
    encoded: Vec<Vec<u8>>,
}

impl HonestSale {
    fn new() -> Self {
        let file: Vec<u8> = (0..SIZE)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()[0])
            .collect();
        let chunks: Vec<&[u8]> = file.chunks(CHUNK_SIZE as usize).collect();
        let plaintext_leaves: Vec<Hash> = chunks.iter().map(|c| merkle::leaf_hash(c)).collect();
        let key = EscrowKey::from_bytes([0x5a; escrow::KEY_LEN]);
        let cipher = ChunkCipher::new(&key, PURCHASE_ID);
        let ciphertexts: Vec<Vec<u8>> = chunks
            .iter()
            .zip(0..)
            .map(|(chunk, index)| {
                let mut chunk = chunk.to_vec();
                cipher.encrypt_in_place(index, &mut chunk);
                chunk
            })
            .collect();
        let ciphertext_leaves: Vec<Hash> = ciphertexts
            .iter()
            .map(|c| escrow::ciphertext_leaf(c))
            .collect();
        let encoded = ciphertexts
            .into_iter()
            .zip(0..)
            .map(|(ciphertext, index)| {
                let evidence =
                    dispute::evidence(index, ciphertext, &ciphertext_leaves, &plaintext_leaves)
                        .expect("evidence for a chunk in range");
                dispute::encode(&evidence)
            })
            .collect();
        Self {
            key,
            ciphertext_root: merkle::root(&ciphertext_leaves).expect("not empty"),
            plaintext_root: merkle::root(&plaintext_leaves).expect("not empty"),
            encoded,
        }
    }

    fn case(&self) -> Case<'_> {
        Case {
            purchase_id: PURCHASE_ID,
            key: &self.key,
            ciphertext_root: &self.ciphertext_root,
            plaintext_root: &self.plaintext_root,
            size: SIZE,
            chunk_size: CHUNK_SIZE,
        }
    }
}

/// The honest sale, built once per fuzzing process.
fn sale() -> &'static HonestSale {
    static SALE: OnceLock<HonestSale> = OnceLock::new();
    SALE.get_or_init(HonestSale::new)
}

/// Decodes `bytes` and, if they are evidence, judges it and checks the
/// properties in the module docs.
fn check(sale: &HonestSale, bytes: &[u8]) {
    let Ok(evidence) = dispute::decode(bytes) else {
        return;
    };
    assert!(
        dispute::encode(&evidence) == bytes,
        "decoding is not canonical: the evidence encodes to other bytes"
    );
    let verdict = dispute::judge(&sale.case(), &evidence);
    assert!(
        verdict.is_err(),
        "an honest seller was found at fault ({verdict:?}) for chunk {}",
        evidence.index
    );
}

/// Real evidence damaged by `data`: the first byte picks the chunk, the
/// next three an offset into its encoding, and the rest is XORed in from
/// there on (whatever runs past the end is appended).
fn damaged(sale: &HonestSale, data: &[u8]) -> Option<Vec<u8>> {
    let (&pick, rest) = data.split_first()?;
    let (offset, damage) = rest.split_at_checked(3)?;
    let mut bytes = sale.encoded[usize::from(pick) % sale.encoded.len()].clone();
    let offset =
        usize::from(offset[0]) << 16 | usize::from(offset[1]) << 8 | usize::from(offset[2]);
    let offset = offset % (bytes.len() + 1);
    for (i, d) in damage.iter().enumerate() {
        match bytes.get_mut(offset + i) {
            Some(byte) => *byte ^= d,
            None => bytes.push(*d),
        }
    }
    Some(bytes)
}

fuzz_target!(|data: &[u8]| {
    let sale = sale();
    check(sale, data);
    if let Some(bytes) = damaged(sale, data) {
        check(sale, &bytes);
    }
});
