//! The BLAKE3 Merkle tree over a file's chunks: what a listing commits to
//! (its plaintext root), what a seller commits to for one sale (the
//! ciphertext root), and what a dispute proves against.
//!
//! The tree has the shape of RFC 6962 (Certificate Transparency): a tree of
//! `n > 1` leaves splits at the largest power of two below `n`, so a file's
//! root is one well-defined value whatever order the chunks are hashed in,
//! and an audit path has at most `ceil(log2 n)` hashes. Hashes are domain
//! separated like RFC 6962's, so a leaf can never pass for an inner node
//! (the second-preimage attack on naive Merkle trees):
//!
//! - leaf: `blake3(0x00 || chunk bytes)`
//! - inner node: `blake3(0x01 || left || right)`
//!
//! A file of `size` bytes has `ceil(size / chunk_size)` chunks, every one
//! `chunk_size` bytes except possibly the last. Pure: no I/O, no clock, no
//! randomness; nothing here panics on any input.

/// A BLAKE3 hash: a leaf, an inner node or a root.
pub type Hash = [u8; 32];

/// The chunk size a file is cut into unless the seller picks another: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// The smallest chunk size accepted: 4 KiB (smaller chunks make the tree,
/// and the per-chunk overhead of a transfer, needlessly large).
pub const MIN_CHUNK_SIZE: u32 = 4096;

/// The largest chunk size accepted: 4 MiB (one chunk, encrypted, must fit
/// in one gRPC message with room to spare).
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;

/// Domain prefix of a leaf hash.
const LEAF_PREFIX: u8 = 0x00;

/// Domain prefix of an inner node hash.
const NODE_PREFIX: u8 = 0x01;

/// A chunk size that is not a power of two between [`MIN_CHUNK_SIZE`] and
/// [`MAX_CHUNK_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the chunk size {0} is not allowed; use a power of two from 4096 (4 KiB) to 4194304 (4 MiB)"
)]
pub struct ChunkSizeError(pub u32);

/// Whether `chunk_size` is a power of two from [`MIN_CHUNK_SIZE`] to
/// [`MAX_CHUNK_SIZE`].
#[must_use]
pub fn is_valid_chunk_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
}

/// `chunk_size` if it is valid (see [`is_valid_chunk_size`]).
///
/// # Errors
/// [`ChunkSizeError`] otherwise.
pub fn check_chunk_size(chunk_size: u32) -> Result<u32, ChunkSizeError> {
    if is_valid_chunk_size(chunk_size) {
        Ok(chunk_size)
    } else {
        Err(ChunkSizeError(chunk_size))
    }
}

/// How many chunks a file of `size` bytes has: `ceil(size / chunk_size)`,
/// so 0 for an empty file. A `chunk_size` of 0 (never valid) gives 0
/// rather than a division by zero.
#[must_use]
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    if chunk_size == 0 {
        return 0;
    }
    size.div_ceil(u64::from(chunk_size))
}

/// The leaf hash of one chunk: `blake3(0x00 || chunk)`.
#[must_use]
pub fn leaf_hash(chunk: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[LEAF_PREFIX]);
    hasher.update(chunk);
    *hasher.finalize().as_bytes()
}

/// The hash of an inner node: `blake3(0x01 || left || right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// Computes a root from leaf hashes given one at a time, keeping only
/// O(log n) hashes: a file of any size is hashed in constant memory.
///
/// The stack holds the roots of complete (power-of-two) subtrees, largest
/// first, one per set bit of the leaf count; two of equal height merge as
/// soon as they meet. [`finish`](Self::finish) folds them from the right,
/// which is exactly RFC 6962's split at the largest power of two.
#[derive(Debug, Clone, Default)]
pub struct MerkleBuilder {
    /// `(height, root)` of each complete subtree, heights strictly
    /// decreasing from the bottom of the stack.
    stack: Vec<(u32, Hash)>,
    /// Leaves pushed so far.
    leaves: u64,
}

impl MerkleBuilder {
    /// An empty builder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next leaf hash (see [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut height = 0;
        let mut hash = leaf;
        while let Some(&(top_height, top)) = self.stack.last() {
            if top_height != height {
                break;
            }
            self.stack.pop();
            hash = node_hash(&top, &hash);
            height += 1;
        }
        self.stack.push((height, hash));
        self.leaves += 1;
    }

    /// How many leaves were pushed.
    #[must_use]
    pub fn leaf_count(&self) -> u64 {
        self.leaves
    }

    /// The root of the leaves pushed so far; `None` when there were none.
    #[must_use]
    pub fn finish(&self) -> Option<Hash> {
        let mut subtrees = self.stack.iter().rev().map(|(_, hash)| *hash);
        let last = subtrees.next()?;
        Some(subtrees.fold(last, |right, left| node_hash(&left, &right)))
    }
}

/// The largest power of two strictly below `n` (for `n >= 2`): where
/// RFC 6962 splits a tree of `n` leaves.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    let k = n.next_power_of_two() / 2;
    if k == n {
        n / 2
    } else {
        k
    }
}

/// The root over `leaves` (RFC 6962's `MTH`); `None` for no leaves.
#[must_use]
pub fn root(leaves: &[Hash]) -> Option<Hash> {
    match leaves {
        [] => None,
        [leaf] => Some(*leaf),
        _ => {
            let k = split_point(leaves.len());
            let left = root(&leaves[..k])?;
            let right = root(&leaves[k..])?;
            Some(node_hash(&left, &right))
        }
    }
}

/// The audit path of leaf `index` (RFC 6962's `PATH`): the sibling hashes
/// from the leaf up to the root. `None` when `index` is out of range.
#[must_use]
pub fn proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    let index = usize::try_from(index).ok()?;
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    collect_path(leaves, index, &mut path)?;
    Some(path)
}

/// Appends the path of `index` within `leaves` to `path`, leaf end first.
fn collect_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) -> Option<()> {
    if leaves.len() <= 1 {
        return Some(());
    }
    let k = split_point(leaves.len());
    if index < k {
        collect_path(&leaves[..k], index, path)?;
        path.push(root(&leaves[k..])?);
    } else {
        collect_path(&leaves[k..], index - k, path)?;
        path.push(root(&leaves[..k])?);
    }
    Some(())
}

/// Whether `leaf` is leaf `index` of a tree of `leaf_count` leaves whose
/// root is `root`, by the audit path `proof` (RFC 9162's verification
/// algorithm, section 2.1.3.2). False for an index out of range, a path of
/// the wrong length, or any hash that does not fit; never panics.
///
/// The path itself does not carry the leaf count: a count only changes
/// the path's shape at the tree's right edge, so for a leaf left of every
/// split two counts disagree on, both verify. Take `leaf_count` from a
/// trusted source (a listing's size and chunk size, see [`chunk_count`]),
/// never from the prover.
#[must_use]
pub fn verify(root: &Hash, index: u64, leaf_count: u64, leaf: &Hash, proof: &[Hash]) -> bool {
    if index >= leaf_count {
        return false;
    }
    // `fnode` walks the leaf's position up the tree, `snode` the last
    // leaf's; where they meet, the path must end.
    let mut fnode = index;
    let mut snode = leaf_count - 1;
    let mut hash = *leaf;
    for sibling in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            // A right-edge node with no right sibling is carried up as is.
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("chunk {i}").as_bytes()))
            .collect()
    }

    fn built(leaves: &[Hash]) -> Option<Hash> {
        let mut builder = MerkleBuilder::new();
        for leaf in leaves {
            builder.push(*leaf);
        }
        assert_eq!(builder.leaf_count(), leaves.len() as u64);
        builder.finish()
    }

    /// RFC 6962's definition, written out literally as the reference.
    fn reference_root(leaves: &[Hash]) -> Option<Hash> {
        let n = leaves.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(leaves[0]);
        }
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        Some(node_hash(
            &reference_root(&leaves[..k])?,
            &reference_root(&leaves[k..])?,
        ))
    }

    /// Which side leaf `index` lies on at each level of a tree of `count`
    /// leaves, from the leaf up (true: left): the shape of its audit path,
    /// from RFC 6962's recursive definition.
    fn directions(index: usize, count: usize) -> Vec<bool> {
        if count <= 1 {
            return Vec::new();
        }
        let mut k = 1;
        while k * 2 < count {
            k *= 2;
        }
        let mut path = if index < k {
            directions(index, k)
        } else {
            directions(index - k, count - k)
        };
        path.push(index < k);
        path
    }

    /// Whether claiming `count` leaves instead of the true `true_count`
    /// leaves the path of leaf `index` unchanged (so no verifier could tell).
    fn same_shape(index: usize, count: u64, true_count: usize) -> bool {
        usize::try_from(count).is_ok_and(|count| {
            index < count
                && count < 1 << 20
                && directions(index, count) == directions(index, true_count)
        })
    }

    #[test]
    fn hashes_are_domain_separated() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let mut concat = Vec::from(a);
        concat.extend_from_slice(&b);
        // A node is not the leaf of its children's concatenation.
        assert_ne!(node_hash(&a, &b), leaf_hash(&concat));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
        assert_eq!(leaf_hash(b""), *blake3::hash(&[0]).as_bytes());
        let mut node_input = vec![1u8];
        node_input.extend_from_slice(&concat);
        assert_eq!(node_hash(&a, &b), *blake3::hash(&node_input).as_bytes());
    }

    #[test]
    fn small_trees_have_the_rfc_6962_shape() {
        let l = leaves(7);
        let n = |a: Hash, b: Hash| node_hash(&a, &b);
        assert_eq!(root(&[]), None);
        assert_eq!(root(&l[..1]), Some(l[0]));
        assert_eq!(root(&l[..2]), Some(n(l[0], l[1])));
        assert_eq!(root(&l[..3]), Some(n(n(l[0], l[1]), l[2])));
        assert_eq!(
            root(&l[..5]),
            Some(n(n(n(l[0], l[1]), n(l[2], l[3])), l[4]))
        );
        assert_eq!(
            root(&l[..7]),
            Some(n(n(n(l[0], l[1]), n(l[2], l[3])), n(n(l[4], l[5]), l[6])))
        );
        assert_eq!(proof(&l[..3], 2), Some(vec![n(l[0], l[1])]));
        assert_eq!(proof(&l[..3], 0), Some(vec![l[1], l[2]]));
        assert_eq!(proof(&l[..1], 0), Some(vec![]));
        assert_eq!(proof(&l[..3], 3), None);
        assert_eq!(proof(&[], 0), None);
    }

    #[test]
    fn builder_matches_root_for_every_size_up_to_300() {
        let all = leaves(300);
        for n in 0..=all.len() {
            let expected = reference_root(&all[..n]);
            assert_eq!(root(&all[..n]), expected, "root of {n}");
            assert_eq!(built(&all[..n]), expected, "builder of {n}");
        }
    }

    #[test]
    fn every_proof_verifies_up_to_70_leaves() {
        let all = leaves(70);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let top = root(tree).expect("a root");
            let count = n as u64;
            for (position, leaf) in tree.iter().enumerate() {
                let i = position as u64;
                let path = proof(tree, i).expect("in range");
                assert!(verify(&top, i, count, leaf, &path), "n={n} i={i}");
                // The same leaf claimed at every other place fails.
                for j in (0..count).filter(|j| *j != i) {
                    assert!(!verify(&top, j, count, leaf, &path), "n={n} i={i} j={j}");
                }
                // Every other count fails unless it gives the same path.
                for m in 0..=2 * count + 1 {
                    if m != count {
                        assert_eq!(
                            verify(&top, i, m, leaf, &path),
                            same_shape(position, m, n),
                            "n={n} i={i} m={m}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn verify_refuses_nonsense_without_panicking() {
        let tree = leaves(5);
        let top = root(&tree).expect("a root");
        let path = proof(&tree, 4).expect("in range");
        assert!(verify(&top, 4, 5, &tree[4], &path));
        assert!(!verify(&top, 5, 5, &tree[4], &path));
        assert!(!verify(&top, 0, 0, &tree[0], &[]));
        assert!(!verify(&top, u64::MAX, u64::MAX, &tree[4], &path));
        assert!(!verify(&top, 4, u64::MAX, &tree[4], &path));
        assert!(!verify(&top, 4, 5, &tree[4], &[]));
        let mut long = path;
        long.push(tree[0]);
        assert!(!verify(&top, 4, 5, &tree[4], &long));
        // A single leaf is its own root with an empty path.
        assert!(verify(&tree[0], 0, 1, &tree[0], &[]));
        assert!(!verify(&tree[0], 0, 1, &tree[0], &[tree[1]]));
    }

    #[test]
    fn chunk_sizes_and_counts() {
        assert!(is_valid_chunk_size(DEFAULT_CHUNK_SIZE));
        assert!(is_valid_chunk_size(MIN_CHUNK_SIZE));
        assert!(is_valid_chunk_size(MAX_CHUNK_SIZE));
        for bad in [0, 1, 2048, 4095, 5000, MAX_CHUNK_SIZE * 2, u32::MAX] {
            assert_eq!(check_chunk_size(bad), Err(ChunkSizeError(bad)), "{bad}");
        }
        assert_eq!(chunk_count(0, 4096), 0);
        assert_eq!(chunk_count(1, 4096), 1);
        assert_eq!(chunk_count(4096, 4096), 1);
        assert_eq!(chunk_count(4097, 4096), 2);
        assert_eq!(chunk_count(u64::MAX, 4096), u64::MAX / 4096 + 1);
        assert_eq!(chunk_count(10, 0), 0);
    }

    proptest! {
        #[test]
        fn builder_equals_root(n in 0usize..600) {
            let all = leaves(n);
            prop_assert_eq!(built(&all), root(&all));
        }

        #[test]
        fn proofs_verify_and_tampering_fails(
            n in 1usize..200,
            pick in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            other in any::<prop::sample::Index>(),
        ) {
            let tree = leaves(n);
            let top = root(&tree).expect("a root");
            let i = pick.index(n);
            let index = i as u64;
            let count = n as u64;
            let path = proof(&tree, index).expect("in range");
            prop_assert!(verify(&top, index, count, &tree[i], &path));

            // A flipped bit anywhere: the leaf, the root, or the path.
            let mut leaf = tree[i];
            leaf[flip.index(32)] ^= 1 << bit;
            prop_assert!(!verify(&top, index, count, &leaf, &path));
            let mut bad_root = top;
            bad_root[flip.index(32)] ^= 1 << bit;
            prop_assert!(!verify(&bad_root, index, count, &tree[i], &path));
            if !path.is_empty() {
                let mut bad_path = path.clone();
                let at = flip.index(bad_path.len());
                bad_path[at][flip.index(32)] ^= 1 << bit;
                prop_assert!(!verify(&top, index, count, &tree[i], &bad_path));
            }

            // Another index.
            let j = other.index(n) as u64;
            if j != index {
                prop_assert!(!verify(&top, j, count, &tree[i], &path));
            }
            // Another leaf count fails wherever it changes the leaf's path
            // (the rightmost leaf's path changes with every count).
            for wrong in [count + 1, count - 1, count * 2, 0, u64::MAX] {
                if wrong != count {
                    prop_assert_eq!(
                        verify(&top, index, wrong, &tree[i], &path),
                        same_shape(i, wrong, n)
                    );
                }
            }
            let last = n - 1;
            let last_path = proof(&tree, last as u64).expect("in range");
            prop_assert!(!verify(&top, last as u64, count + 1, &tree[last], &last_path));
        }

        #[test]
        fn verify_never_panics(
            root in any::<[u8; 32]>(),
            index in any::<u64>(),
            count in any::<u64>(),
            leaf in any::<[u8; 32]>(),
            path in prop::collection::vec(any::<[u8; 32]>(), 0..70),
        ) {
            let _ = verify(&root, index, count, &leaf, &path);
        }
    }
}
