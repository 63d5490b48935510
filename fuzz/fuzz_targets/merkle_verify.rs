//! [`merkle::verify`] on arbitrary roots, indexes, leaf counts, leaves and
//! proofs, and the round trip: a proof made by [`merkle::proof`] verifies.
//!
//! Properties checked, besides "never panics":
//!
//! - nothing verifies for an index at or past the leaf count;
//! - over a tree built from the input, the proof of every picked leaf
//!   verifies against [`merkle::root`] (which [`merkle::MerkleBuilder`]
//!   agrees with), and fails once one bit of the leaf, the root or the
//!   proof is flipped, or the last leaf is claimed in a larger tree.

#![no_main]

use agora_proto::merkle::{self, Hash, MerkleBuilder};
use libfuzzer_sys::fuzz_target;

/// Most leaves in the round-trip tree: enough for paths of 10 hashes, few
/// enough to keep every run fast.
const MAX_LEAVES: usize = 1024;

/// The fuzzer's input: arbitrary arguments for `verify`, then the tree to
/// round-trip (one byte per leaf), which leaf to prove, and which bit to
/// flip.
type Input = (Hash, u64, u64, Hash, Vec<Hash>, Vec<u8>, u16, u16);

fuzz_target!(|input: Input| {
    let (root, index, count, leaf, proof, tree, pick, flip) = input;

    let verified = merkle::verify(&root, index, count, &leaf, &proof);
    if index >= count {
        assert!(
            !verified,
            "leaf {index} verified in a tree of {count} leaves"
        );
    }

    // The round trip. Leaves may repeat: nothing here relies on them being
    // distinct.
    let leaves: Vec<Hash> = tree
        .iter()
        .take(MAX_LEAVES)
        .map(|byte| merkle::leaf_hash(&[*byte]))
        .collect();
    let Some(top) = merkle::root(&leaves) else {
        return;
    };
    let mut builder = MerkleBuilder::new();
    for leaf in &leaves {
        builder.push(*leaf);
    }
    assert_eq!(
        builder.finish(),
        Some(top),
        "the builder disagrees with root"
    );

    let n = leaves.len() as u64;
    let i = u64::from(pick) % n;
    let at = usize::from(pick) % leaves.len();
    let path = merkle::proof(&leaves, i).expect("an index in range");
    assert!(
        merkle::verify(&top, i, n, &leaves[at], &path),
        "the proof of leaf {i} of {n} does not verify"
    );

    let (byte, bit) = (usize::from(flip / 8) % 32, flip % 8);
    let mut bad_leaf = leaves[at];
    bad_leaf[byte] ^= 1 << bit;
    assert!(
        !merkle::verify(&top, i, n, &bad_leaf, &path),
        "a flipped leaf verified"
    );
    let mut bad_root = top;
    bad_root[byte] ^= 1 << bit;
    assert!(
        !merkle::verify(&bad_root, i, n, &leaves[at], &path),
        "a flipped root verified"
    );
    if !path.is_empty() {
        let mut bad_path = path.clone();
        let hash = usize::from(flip) % bad_path.len();
        bad_path[hash][byte] ^= 1 << bit;
        assert!(
            !merkle::verify(&top, i, n, &leaves[at], &bad_path),
            "a flipped proof verified"
        );
    }

    // The last leaf's path changes with every leaf count.
    let last = leaves.len() - 1;
    let last_path = merkle::proof(&leaves, n - 1).expect("an index in range");
    assert!(
        !merkle::verify(&top, n - 1, n + 1, &leaves[last], &last_path),
        "the last of {n} leaves verified in a tree of {}",
        n + 1
    );
});
