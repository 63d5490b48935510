//! Disputes: a buyer's proof that a seller delivered a bad chunk, and the
//! judgement the cluster reaches on it with the escrowed key.
//!
//! After paying, a buyer decrypts every chunk. When chunk `index` does not
//! decrypt, or decrypts to bytes whose leaf is not the listing's leaf
//! `index`, the buyer files [`Evidence`]: the ciphertext chunk with its
//! audit path to the ciphertext root the seller committed to when it
//! deposited the key, and the listing's plaintext leaf with its audit path
//! to the listing's root. [`judge`] then needs nothing the seller could
//! dispute: the ciphertext is bound to the seller's own commitment, the
//! expected leaf to the listing, and the key is the one the seller
//! deposited — so any mismatch is the seller's fault. Evidence that proves
//! nothing (a good chunk, a tampered proof, or another purchase's chunk
//! replayed here) is refused and changes nothing.
//!
//! Every leaf count comes from the [`Case`] (the listing's size and chunk
//! size), never from the evidence, because an audit path does not carry
//! the tree's size (see [`merkle::verify`]).
//!
//! Evidence travels in a compact binary form ([`encode`], [`decode`]):
//!
//! | field            | encoding                                        |
//! |------------------|-------------------------------------------------|
//! | version          | 1 byte, [`ENCODING_VERSION`]                    |
//! | index            | u64, big-endian                                 |
//! | ciphertext       | u32 length, big-endian, then the bytes          |
//! | ciphertext proof | 1-byte hash count, then 32 bytes per hash       |
//! | plaintext leaf   | 32 bytes                                        |
//! | leaf proof       | 1-byte hash count, then 32 bytes per hash       |
//!
//! with nothing after it. Pure and deterministic: no I/O, no clock, no
//! randomness, so every node of the cluster reaches the same judgement;
//! nothing here panics on any input.

use crate::escrow::{self, ChunkCipher, EscrowKey};
use crate::merkle::{self, Hash};

/// Most hashes in one audit path. A tree of 2^64 leaves (more chunks than
/// a `u64` can count) has paths of 64 hashes, so no honest proof is longer.
pub const MAX_PROOF_LEN: usize = 64;

/// Longest ciphertext chunk: the largest chunk size plus the GCM tag.
pub const MAX_CIPHERTEXT_LEN: usize = merkle::MAX_CHUNK_SIZE as usize + escrow::TAG_LEN;

/// The only encoding version this build writes and reads.
pub const ENCODING_VERSION: u8 = 1;

/// Length of a hash on the wire.
const HASH_LEN: usize = 32;

/// What the buyer submits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The chunk disputed.
    pub index: u64,
    /// The encrypted chunk exactly as the seller sent it.
    pub ciphertext: Vec<u8>,
    /// The ciphertext's audit path to the ciphertext root the seller
    /// committed to when it deposited the key: what makes the chunk the
    /// seller's own.
    pub ciphertext_proof: Vec<Hash>,
    /// The listing's plaintext leaf for `index`: what the chunk should
    /// have decrypted to.
    pub plaintext_leaf: Hash,
    /// The leaf's audit path to the listing's plaintext root: what makes
    /// the leaf the listing's and not one the buyer made up.
    pub leaf_proof: Vec<Hash>,
}

/// What the judge knows from the replicated state. Nothing here comes from
/// the buyer.
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// The purchase disputed: bound into every chunk's associated data, so
    /// another purchase's chunks do not decrypt here.
    pub purchase_id: u64,
    /// The key the seller deposited for this purchase.
    pub key: &'a EscrowKey,
    /// The ciphertext root the seller committed to with the key.
    pub ciphertext_root: &'a Hash,
    /// The listing's plaintext root.
    pub plaintext_root: &'a Hash,
    /// The listing's file size in bytes.
    pub size: u64,
    /// The listing's chunk size.
    pub chunk_size: u32,
}

/// What the seller did wrong: the dispute is upheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The chunk the seller committed to does not decrypt under the key it
    /// deposited.
    DoesNotDecrypt,
    /// The chunk decrypts, but not to the listing's content.
    WrongContent,
}

/// Why a dispute is refused; a refused dispute changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The file has no such chunk.
    #[error(
        "chunk {index} does not exist: the file has {chunk_count} chunks; dispute a chunk from \
         0 to the last"
    )]
    IndexOutOfRange {
        /// The chunk disputed.
        index: u64,
        /// How many chunks the file has.
        chunk_count: u64,
    },
    /// The ciphertext is not as long as the chunk's encryption is.
    #[error(
        "the ciphertext is {got} bytes, but this chunk encrypts to {expected}; submit the chunk \
         exactly as the seller sent it"
    )]
    WrongLength {
        /// The length of the chunk's encryption.
        expected: usize,
        /// The length submitted.
        got: usize,
    },
    /// The ciphertext's proof does not lead to the seller's committed root.
    #[error(
        "this ciphertext is not what the seller committed to for chunk {index} (its proof does \
         not lead to the deposited root); submit the chunk as the seller sent it, with its proof \
         from the seller's ciphertext leaves"
    )]
    NotCommitted {
        /// The chunk disputed.
        index: u64,
    },
    /// The leaf's proof does not lead to the listing's root.
    #[error(
        "the leaf given is not the listing's leaf {index} (its proof does not lead to the \
         listing's root); submit the leaf and proof from the listing's manifest"
    )]
    NotTheListing {
        /// The chunk disputed.
        index: u64,
    },
    /// Nothing is wrong with the chunk.
    #[error(
        "chunk {index} decrypts to exactly the listing's leaf: the seller delivered it; check \
         your own copy of the chunk"
    )]
    ChunkIsGood {
        /// The chunk disputed.
        index: u64,
    },
    /// A proof longer than any tree needs.
    #[error(
        "a proof of {len} hashes is longer than any file's ({MAX_PROOF_LEN} at most); submit \
         the proof made from the file's leaves"
    )]
    ProofTooLong {
        /// The hashes in the longer proof.
        len: usize,
    },
}

/// Judges the evidence: `Ok(fault)` when the seller cheated, `Err(refusal)`
/// otherwise. Pure and deterministic; never panics on any input.
///
/// The checks run in this order, and the first that fails decides: the
/// index is in range, the ciphertext has the chunk's encrypted length, no
/// proof is longer than [`MAX_PROOF_LEN`], the ciphertext is the seller's
/// committed chunk, the leaf is the listing's; then the chunk is decrypted
/// and compared with the leaf.
///
/// # Errors
/// The [`Refusal`] of the first check that fails, or
/// [`Refusal::ChunkIsGood`] when every check passes and the chunk is good.
pub fn judge(case: &Case<'_>, evidence: &Evidence) -> Result<Fault, Refusal> {
    let index = evidence.index;
    let chunk_count = merkle::chunk_count(case.size, case.chunk_size);
    if index >= chunk_count {
        return Err(Refusal::IndexOutOfRange { index, chunk_count });
    }
    let expected =
        escrow::ciphertext_len(escrow::plain_chunk_len(case.size, case.chunk_size, index));
    if evidence.ciphertext.len() != expected {
        return Err(Refusal::WrongLength {
            expected,
            got: evidence.ciphertext.len(),
        });
    }
    for proof in [&evidence.ciphertext_proof, &evidence.leaf_proof] {
        if proof.len() > MAX_PROOF_LEN {
            return Err(Refusal::ProofTooLong { len: proof.len() });
        }
    }
    if !merkle::verify(
        case.ciphertext_root,
        index,
        chunk_count,
        &escrow::ciphertext_leaf(&evidence.ciphertext),
        &evidence.ciphertext_proof,
    ) {
        return Err(Refusal::NotCommitted { index });
    }
    if !merkle::verify(
        case.plaintext_root,
        index,
        chunk_count,
        &evidence.plaintext_leaf,
        &evidence.leaf_proof,
    ) {
        return Err(Refusal::NotTheListing { index });
    }
    let mut plain = evidence.ciphertext.clone();
    if ChunkCipher::new(case.key, case.purchase_id)
        .decrypt_in_place(index, &mut plain)
        .is_err()
    {
        return Ok(Fault::DoesNotDecrypt);
    }
    if merkle::leaf_hash(&plain) != evidence.plaintext_leaf {
        return Ok(Fault::WrongContent);
    }
    Err(Refusal::ChunkIsGood { index })
}

/// Builds the evidence for chunk `index` from the buyer's data: all the
/// ciphertext leaves the seller committed to (to make the proof), the
/// ciphertext chunk itself, and all the plaintext leaves from the listing's
/// manifest.
///
/// `None` when the evidence could only be refused: `index` is out of
/// range, the two leaf lists differ in length (one leaf per chunk in
/// each), or `ciphertext` is not the chunk the ciphertext leaves commit to.
#[must_use]
pub fn evidence(
    index: u64,
    ciphertext: Vec<u8>,
    ciphertext_leaves: &[Hash],
    plaintext_leaves: &[Hash],
) -> Option<Evidence> {
    if ciphertext_leaves.len() != plaintext_leaves.len() {
        return None;
    }
    let position = usize::try_from(index).ok()?;
    if ciphertext_leaves.get(position)? != &escrow::ciphertext_leaf(&ciphertext) {
        return None;
    }
    Some(Evidence {
        index,
        ciphertext_proof: merkle::proof(ciphertext_leaves, index)?,
        plaintext_leaf: *plaintext_leaves.get(position)?,
        leaf_proof: merkle::proof(plaintext_leaves, index)?,
        ciphertext,
    })
}

/// Why bytes are not evidence this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An unknown encoding version.
    #[error(
        "the evidence is in encoding version {0}, and this build reads only version \
         {ENCODING_VERSION}; update Agora"
    )]
    UnknownVersion(u8),
    /// The bytes end before the evidence does.
    #[error("the evidence is cut off; send all of it again")]
    Truncated,
    /// Bytes after the end of the evidence.
    #[error("the evidence is followed by {0} stray bytes; send the evidence alone")]
    TrailingBytes(usize),
    /// A ciphertext longer than any chunk's encryption.
    #[error(
        "the ciphertext claims {0} bytes, more than any chunk encrypts to \
         ({MAX_CIPHERTEXT_LEN}); send the chunk as the seller sent it"
    )]
    CiphertextTooLong(u64),
    /// A proof longer than any tree needs.
    #[error(
        "a proof claims {0} hashes, more than any file's ({MAX_PROOF_LEN} at most); send the \
         proof made from the file's leaves"
    )]
    ProofTooLong(usize),
}

/// Encodes evidence in the compact binary form (see the module docs).
///
/// Evidence beyond the bounds — a ciphertext longer than
/// [`MAX_CIPHERTEXT_LEN`] or a proof longer than [`MAX_PROOF_LEN`] — gets
/// an oversized length field (saturated, never wrapped), so [`decode`]
/// refuses it rather than misreading it.
#[must_use]
pub fn encode(e: &Evidence) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(
        1 + 8
            + 4
            + e.ciphertext.len()
            + 2
            + HASH_LEN * (1 + e.ciphertext_proof.len() + e.leaf_proof.len()),
    );
    bytes.push(ENCODING_VERSION);
    bytes.extend_from_slice(&e.index.to_be_bytes());
    let ciphertext_len = u32::try_from(e.ciphertext.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&ciphertext_len.to_be_bytes());
    bytes.extend_from_slice(&e.ciphertext);
    put_proof(&mut bytes, &e.ciphertext_proof);
    bytes.extend_from_slice(&e.plaintext_leaf);
    put_proof(&mut bytes, &e.leaf_proof);
    bytes
}

/// Appends a proof: its hash count as one byte (saturated), then the hashes.
fn put_proof(bytes: &mut Vec<u8>, proof: &[Hash]) {
    bytes.push(u8::try_from(proof.len()).unwrap_or(u8::MAX));
    for hash in proof {
        bytes.extend_from_slice(hash);
    }
}

/// Decodes evidence from its compact binary form (see the module docs).
/// Bounded: it never allocates more than the input's length, and never
/// panics.
///
/// # Errors
/// A [`DecodeError`] saying what is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<Evidence, DecodeError> {
    let mut reader = Reader(bytes);
    let version = reader.u8()?;
    if version != ENCODING_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let index = u64::from_be_bytes(reader.array()?);
    let claimed = u32::from_be_bytes(reader.array()?);
    let ciphertext_len = usize::try_from(claimed)
        .ok()
        .filter(|len| *len <= MAX_CIPHERTEXT_LEN)
        .ok_or(DecodeError::CiphertextTooLong(u64::from(claimed)))?;
    let ciphertext = reader.take(ciphertext_len)?.to_vec();
    let ciphertext_proof = reader.proof()?;
    let plaintext_leaf = reader.array()?;
    let leaf_proof = reader.proof()?;
    if !reader.0.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.0.len()));
    }
    Ok(Evidence {
        index,
        ciphertext,
        ciphertext_proof,
        plaintext_leaf,
        leaf_proof,
    })
}

/// Reads the encoding front to back; what is left is the unread part.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next `len` bytes.
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    /// The next byte.
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[byte]| byte)
    }

    /// A proof: a one-byte count, then that many hashes.
    fn proof(&mut self) -> Result<Vec<Hash>, DecodeError> {
        let len = usize::from(self.u8()?);
        if len > MAX_PROOF_LEN {
            return Err(DecodeError::ProofTooLong(len));
        }
        (0..len).map(|_| self.array()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escrow::KEY_LEN;
    use proptest::prelude::*;

    /// The chunk size of the test files: the smallest allowed, to keep
    /// them small.
    const CHUNK: u32 = merkle::MIN_CHUNK_SIZE;

    /// A file of 3 full chunks and a short fourth.
    const SIZE: u64 = 3 * CHUNK as u64 + 1000;

    /// One purchase of a file, as the seller made it and the cluster
    /// recorded it.
    struct Sale {
        purchase_id: u64,
        key: EscrowKey,
        /// The plaintext chunks the listing describes.
        chunks: Vec<Vec<u8>>,
        /// The listing's leaves.
        plaintext_leaves: Vec<Hash>,
        plaintext_root: Hash,
        /// The ciphertext chunks the seller sent.
        ciphertexts: Vec<Vec<u8>>,
        /// The leaves the seller committed to.
        ciphertext_leaves: Vec<Hash>,
        ciphertext_root: Hash,
        size: u64,
    }

    impl Sale {
        /// An honest sale of a file of `size` bytes seeded by `seed`.
        fn honest(seed: u8, purchase_id: u64, size: u64) -> Self {
            let file: Vec<u8> = (0..size)
                // No two chunks alike (a multiplicative hash of the offset).
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()[0] ^ seed)
                .collect();
            let chunks: Vec<Vec<u8>> = file.chunks(CHUNK as usize).map(<[u8]>::to_vec).collect();
            let plaintext_leaves: Vec<Hash> = chunks.iter().map(|c| merkle::leaf_hash(c)).collect();
            let mut sale = Self {
                purchase_id,
                key: EscrowKey::from_bytes([seed; KEY_LEN]),
                plaintext_root: merkle::root(&plaintext_leaves).expect("not empty"),
                plaintext_leaves,
                chunks: chunks.clone(),
                ciphertexts: Vec::new(),
                ciphertext_leaves: Vec::new(),
                ciphertext_root: [0; 32],
                size,
            };
            let key = sale.key.clone();
            sale.seal(&chunks, &key);
            sale
        }

        /// The seller encrypts `sent` (what it chooses to send) under `key`
        /// and commits to the result.
        fn seal(&mut self, sent: &[Vec<u8>], key: &EscrowKey) {
            let cipher = ChunkCipher::new(key, self.purchase_id);
            self.ciphertexts = sent
                .iter()
                .zip(0..)
                .map(|(chunk, index)| {
                    let mut chunk = chunk.clone();
                    cipher.encrypt_in_place(index, &mut chunk);
                    chunk
                })
                .collect();
            self.ciphertext_leaves = self
                .ciphertexts
                .iter()
                .map(|c| escrow::ciphertext_leaf(c))
                .collect();
            self.ciphertext_root = merkle::root(&self.ciphertext_leaves).expect("not empty");
        }

        fn case(&self) -> Case<'_> {
            Case {
                purchase_id: self.purchase_id,
                key: &self.key,
                ciphertext_root: &self.ciphertext_root,
                plaintext_root: &self.plaintext_root,
                size: self.size,
                chunk_size: CHUNK,
            }
        }

        fn evidence(&self, index: u64) -> Evidence {
            let position = usize::try_from(index).expect("small");
            evidence(
                index,
                self.ciphertexts[position].clone(),
                &self.ciphertext_leaves,
                &self.plaintext_leaves,
            )
            .expect("evidence")
        }

        fn count(&self) -> u64 {
            self.chunks.len() as u64
        }
    }

    #[test]
    fn an_honest_file_is_never_at_fault() {
        let sale = Sale::honest(1, 7, SIZE);
        assert_eq!(sale.count(), 4);
        assert_eq!(sale.chunks[3].len(), 1000, "the last chunk is short");
        for index in 0..sale.count() {
            assert_eq!(
                judge(&sale.case(), &sale.evidence(index)),
                Err(Refusal::ChunkIsGood { index }),
                "chunk {index}"
            );
        }
    }

    #[test]
    fn a_chunk_corrupted_before_encryption_is_wrong_content() {
        for bad in 0..4 {
            let mut sale = Sale::honest(2, 7, SIZE);
            let mut sent = sale.chunks.clone();
            sent[bad][10] ^= 0xff;
            let key = sale.key.clone();
            // The seller commits to exactly what it sent, so its root is
            // consistent and the buyer's download checks pass.
            sale.seal(&sent, &key);
            for index in 0..sale.count() {
                let expected = if index == bad as u64 {
                    Ok(Fault::WrongContent)
                } else {
                    Err(Refusal::ChunkIsGood { index })
                };
                assert_eq!(
                    judge(&sale.case(), &sale.evidence(index)),
                    expected,
                    "bad {bad}, chunk {index}"
                );
            }
        }
    }

    #[test]
    fn a_chunk_under_another_key_does_not_decrypt() {
        let mut sale = Sale::honest(3, 7, SIZE);
        let chunks = sale.chunks.clone();
        // The seller encrypts under one key, commits to that, and deposits
        // another.
        sale.seal(&chunks, &EscrowKey::from_bytes([99; KEY_LEN]));
        for index in 0..sale.count() {
            assert_eq!(
                judge(&sale.case(), &sale.evidence(index)),
                Ok(Fault::DoesNotDecrypt),
                "chunk {index}"
            );
        }
        // The same for a chunk encrypted for another purchase or index.
        let mut sale = Sale::honest(3, 7, SIZE);
        let mut other = sale.chunks[1].clone();
        ChunkCipher::new(&sale.key, 8).encrypt_in_place(1, &mut other);
        let mut swapped = sale.chunks[0].clone();
        ChunkCipher::new(&sale.key, 7).encrypt_in_place(2, &mut swapped);
        sale.ciphertexts[1] = other;
        sale.ciphertexts[0] = swapped;
        sale.ciphertext_leaves = sale
            .ciphertexts
            .iter()
            .map(|c| escrow::ciphertext_leaf(c))
            .collect();
        sale.ciphertext_root = merkle::root(&sale.ciphertext_leaves).expect("not empty");
        for index in 0..2 {
            assert_eq!(
                judge(&sale.case(), &sale.evidence(index)),
                Ok(Fault::DoesNotDecrypt),
                "chunk {index}"
            );
        }
    }

    #[test]
    fn another_purchases_evidence_is_refused() {
        // Purchase A was cheated; its evidence is replayed against B.
        let mut a = Sale::honest(4, 10, SIZE);
        let chunks = a.chunks.clone();
        a.seal(&chunks, &EscrowKey::from_bytes([98; KEY_LEN]));
        assert_eq!(judge(&a.case(), &a.evidence(1)), Ok(Fault::DoesNotDecrypt));
        let mut b = Sale::honest(4, 11, SIZE);
        b.key = EscrowKey::from_bytes([44; KEY_LEN]);
        let key = b.key.clone();
        b.seal(&chunks, &key);
        assert_eq!(b.plaintext_root, a.plaintext_root, "the same listing");
        assert_eq!(
            judge(&b.case(), &b.evidence(1)),
            Err(Refusal::ChunkIsGood { index: 1 })
        );
        assert_eq!(
            judge(&b.case(), &a.evidence(1)),
            Err(Refusal::NotCommitted { index: 1 })
        );
        // Also against a purchase of another listing entirely.
        let c = Sale::honest(5, 12, SIZE);
        assert_eq!(
            judge(&c.case(), &a.evidence(1)),
            Err(Refusal::NotCommitted { index: 1 })
        );
        // A's own chunk 2 offered as its chunk 1.
        let mut moved = a.evidence(2);
        moved.index = 1;
        assert_eq!(
            judge(&a.case(), &moved),
            Err(Refusal::NotCommitted { index: 1 })
        );
    }

    #[test]
    fn tampered_evidence_is_refused() {
        let mut sale = Sale::honest(6, 7, SIZE);
        let chunks = sale.chunks.clone();
        sale.seal(&chunks, &EscrowKey::from_bytes([97; KEY_LEN]));
        let good = sale.evidence(2);
        assert_eq!(judge(&sale.case(), &good), Ok(Fault::DoesNotDecrypt));

        let mut e = good.clone();
        e.ciphertext[0] ^= 1;
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::NotCommitted { index: 2 })
        );
        let mut e = good.clone();
        e.ciphertext_proof[0][0] ^= 1;
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::NotCommitted { index: 2 })
        );
        let mut e = good.clone();
        e.ciphertext_proof.pop();
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::NotCommitted { index: 2 })
        );
        // A leaf the buyer made up, or the listing's leaf of another chunk.
        let mut e = good.clone();
        e.plaintext_leaf[31] ^= 1;
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::NotTheListing { index: 2 })
        );
        let mut e = good.clone();
        assert_ne!(sale.plaintext_leaves[1], sale.plaintext_leaves[2]);
        e.plaintext_leaf = sale.plaintext_leaves[1];
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::NotTheListing { index: 2 })
        );
        let mut e = good.clone();
        e.leaf_proof[1][5] ^= 0x80;
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::NotTheListing { index: 2 })
        );
        let mut e = good.clone();
        e.ciphertext.push(0);
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::WrongLength {
                expected: CHUNK as usize + escrow::TAG_LEN,
                got: CHUNK as usize + escrow::TAG_LEN + 1,
            })
        );
        let mut e = good.clone();
        e.leaf_proof = vec![[0; 32]; MAX_PROOF_LEN + 1];
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::ProofTooLong {
                len: MAX_PROOF_LEN + 1
            })
        );
        let mut e = good;
        e.ciphertext_proof = vec![[0; 32]; 1000];
        assert_eq!(
            judge(&sale.case(), &e),
            Err(Refusal::ProofTooLong { len: 1000 })
        );
    }

    #[test]
    fn an_index_out_of_range_is_refused() {
        let sale = Sale::honest(7, 7, SIZE);
        let mut e = sale.evidence(3);
        for index in [4, 5, u64::MAX] {
            e.index = index;
            assert_eq!(
                judge(&sale.case(), &e),
                Err(Refusal::IndexOutOfRange {
                    index,
                    chunk_count: 4
                })
            );
        }
        // An empty file has no chunk to dispute.
        let empty = Case {
            size: 0,
            ..sale.case()
        };
        e.index = 0;
        assert_eq!(
            judge(&empty, &e),
            Err(Refusal::IndexOutOfRange {
                index: 0,
                chunk_count: 0
            })
        );
    }

    #[test]
    fn a_single_chunk_file() {
        let sale = Sale::honest(8, 7, 10);
        assert!(sale.evidence(0).ciphertext_proof.is_empty());
        assert_eq!(
            judge(&sale.case(), &sale.evidence(0)),
            Err(Refusal::ChunkIsGood { index: 0 })
        );
    }

    #[test]
    fn evidence_is_only_built_when_it_can_stand() {
        let sale = Sale::honest(9, 7, SIZE);
        let ct = |i: usize| sale.ciphertexts[i].clone();
        let (cl, pl) = (&sale.ciphertext_leaves, &sale.plaintext_leaves);
        assert!(evidence(3, ct(3), cl, pl).is_some());
        assert_eq!(evidence(4, ct(3), cl, pl), None, "out of range");
        assert_eq!(evidence(u64::MAX, ct(3), cl, pl), None, "out of range");
        assert_eq!(evidence(2, ct(3), cl, pl), None, "another chunk");
        assert_eq!(evidence(3, ct(3), cl, &pl[..3]), None, "leaf counts differ");
        assert_eq!(evidence(0, ct(0), &[], &[]), None, "no leaves");
    }

    #[test]
    fn encoding_round_trips() {
        let sale = Sale::honest(10, 7, SIZE);
        for index in 0..sale.count() {
            let e = sale.evidence(index);
            let bytes = encode(&e);
            assert_eq!(
                bytes.len(),
                1 + 8
                    + 4
                    + e.ciphertext.len()
                    + 2
                    + 32 * (1 + e.ciphertext_proof.len() + e.leaf_proof.len())
            );
            assert_eq!(decode(&bytes), Ok(e));
        }
        let empty = Evidence {
            index: u64::MAX,
            ciphertext: Vec::new(),
            ciphertext_proof: Vec::new(),
            plaintext_leaf: [3; 32],
            leaf_proof: vec![[4; 32]; MAX_PROOF_LEN],
        };
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let sale = Sale::honest(11, 7, SIZE);
        let bytes = encode(&sale.evidence(1));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len]), Err(DecodeError::Truncated), "{len}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0, 0]);
        assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes(2)));
        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(decode(&version), Err(DecodeError::UnknownVersion(2)));
        let mut huge = bytes;
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(&huge),
            Err(DecodeError::CiphertextTooLong(u64::from(u32::MAX)))
        );
        // Evidence past the bounds encodes to bytes that decode refuses.
        let mut long_proof = sale.evidence(1);
        long_proof.leaf_proof = vec![[0; 32]; 300];
        assert_eq!(
            decode(&encode(&long_proof)),
            Err(DecodeError::ProofTooLong(255))
        );
        long_proof.ciphertext_proof = vec![[0; 32]; MAX_PROOF_LEN + 1];
        assert_eq!(
            decode(&encode(&long_proof)),
            Err(DecodeError::ProofTooLong(MAX_PROOF_LEN + 1))
        );
        let mut long_ciphertext = sale.evidence(1);
        long_ciphertext.ciphertext = vec![0; MAX_CIPHERTEXT_LEN + 1];
        assert_eq!(
            decode(&encode(&long_ciphertext)),
            Err(DecodeError::CiphertextTooLong(
                MAX_CIPHERTEXT_LEN as u64 + 1
            ))
        );
    }

    #[test]
    fn refusals_read_as_sentences() {
        assert_eq!(
            Refusal::NotCommitted { index: 3 }.to_string(),
            "this ciphertext is not what the seller committed to for chunk 3 (its proof does not \
             lead to the deposited root); submit the chunk as the seller sent it, with its proof \
             from the seller's ciphertext leaves"
        );
        assert!(Refusal::ChunkIsGood { index: 3 }.to_string().starts_with(
            "chunk 3 decrypts to exactly the listing's leaf: the seller delivered it"
        ));
        assert!(Refusal::NotTheListing { index: 3 }
            .to_string()
            .starts_with("the leaf given is not the listing's leaf 3"));
    }

    fn any_evidence() -> impl Strategy<Value = Evidence> {
        (
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(any::<[u8; 32]>(), 0..70),
            any::<[u8; 32]>(),
            prop::collection::vec(any::<[u8; 32]>(), 0..70),
        )
            .prop_map(
                |(index, ciphertext, ciphertext_proof, plaintext_leaf, leaf_proof)| Evidence {
                    index,
                    ciphertext,
                    ciphertext_proof,
                    plaintext_leaf,
                    leaf_proof,
                },
            )
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(e) = decode(&bytes) {
                // What decodes is canonical: it encodes to the same bytes.
                prop_assert_eq!(encode(&e), bytes);
            }
        }

        #[test]
        fn decode_never_panics_on_damaged_evidence(
            e in any_evidence(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode(&e);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            let _ = decode(&bytes);
            let cut = cut.index(bytes.len());
            let _ = decode(&bytes[..cut]);
        }

        #[test]
        fn encoding_round_trips_within_bounds(e in any_evidence()) {
            let bounded = e.ciphertext_proof.len() <= MAX_PROOF_LEN
                && e.leaf_proof.len() <= MAX_PROOF_LEN;
            prop_assert_eq!(decode(&encode(&e)).is_ok(), bounded);
            if bounded {
                prop_assert_eq!(decode(&encode(&e)), Ok(e));
            }
        }

        #[test]
        fn judge_never_panics(
            e in any_evidence(),
            key in any::<[u8; KEY_LEN]>(),
            purchase_id in any::<u64>(),
            ciphertext_root in any::<[u8; 32]>(),
            plaintext_root in any::<[u8; 32]>(),
            size in prop_oneof![any::<u64>(), 0u64..2000],
            chunk_size in prop_oneof![any::<u32>(), 0u32..300],
        ) {
            let key = EscrowKey::from_bytes(key);
            let case = Case {
                purchase_id,
                key: &key,
                ciphertext_root: &ciphertext_root,
                plaintext_root: &plaintext_root,
                size,
                chunk_size,
            };
            // Random evidence proves nothing against random roots.
            prop_assert!(judge(&case, &e).is_err());
        }

        #[test]
        fn honest_sales_are_upheld_only_when_the_seller_cheated(
            seed in any::<u8>(),
            purchase_id in any::<u64>(),
            size in 1u64..6 * u64::from(CHUNK),
            pick in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let sale = Sale::honest(seed, purchase_id, size);
            let index = pick.index(sale.chunks.len());
            let e = sale.evidence(index as u64);
            prop_assert_eq!(
                judge(&sale.case(), &e),
                Err(Refusal::ChunkIsGood { index: index as u64 })
            );
            // Any flipped byte of the chunk breaks its commitment.
            let mut tampered = e;
            let at = flip.index(tampered.ciphertext.len());
            tampered.ciphertext[at] ^= 0x01;
            prop_assert_eq!(
                judge(&sale.case(), &tampered),
                Err(Refusal::NotCommitted { index: index as u64 })
            );
        }
    }
}
