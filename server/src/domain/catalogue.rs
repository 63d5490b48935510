//! Catalogue rules: what a listing may say, how user text becomes an FTS5
//! query that can never be a syntax error, and the search cursor.
//!
//! Pure: no I/O. The state machine runs [`ListingText::normalized`] and
//! [`FileFacts::validate`] again on apply, so a bad command from an old or
//! buggy proposer cannot enter the state.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use agora_proto::listing::*;

/// What a seller says about a file: everything search looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingText {
    /// 1..=200 characters, trimmed.
    pub title: String,
    /// At most 10,000 characters, trimmed.
    pub description: String,
    /// An existing topic.
    pub topic: String,
    /// Lower-cased, trimmed, without duplicates, in the given order.
    pub tags: Vec<String>,
    /// Lower-case keys.
    pub attributes: BTreeMap<String, String>,
}

impl ListingText {
    /// Trims, lower-cases what is case-insensitive and checks every limit.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn normalized(self) -> Result<Self, String> {
        Ok(Self {
            title: title(&self.title)?,
            description: description(&self.description)?,
            topic: topic_or_default(&self.topic)?,
            tags: tags(&self.tags)?,
            attributes: attributes(&self.attributes)?,
        })
    }
}

/// The facts about the file itself, fixed at publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    /// Bytes.
    pub size: u64,
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// BLAKE3 Merkle root over the plaintext chunks.
    pub merkle_root: [u8; 32],
}

impl FileFacts {
    /// Checks sizes.
    ///
    /// # Errors
    /// An empty or too large file, or a chunk size that is not a power of
    /// two in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("the file is empty; there is nothing to sell".into());
        }
        if self.size > MAX_FILE_SIZE {
            return Err("a listed file is at most 1 TiB".into());
        }
        if !self.chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
        {
            return Err(format!(
                "the chunk size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes (got {})",
                self.chunk_size
            ));
        }
        Ok(())
    }
}

/// Converts a root from the wire.
///
/// # Errors
/// Anything but 32 bytes.
pub fn merkle_root(bytes: &[u8]) -> Result<[u8; 32], String> {
    bytes
        .try_into()
        .map_err(|_| format!("a Merkle root is 32 bytes (got {})", bytes.len()))
}

/// Turns user text into an FTS5 query that matches listings containing
/// every word, or `None` when the text has no words (browse).
///
/// Words are split the way FTS5's `unicode61` tokenizer splits them
/// (letters and digits; everything else separates), and each is quoted, so
/// no text can be an FTS5 syntax error or reach a column filter or
/// operator.
///
/// # Errors
/// Text longer than [`MAX_QUERY_BYTES`] or with more than
/// [`MAX_QUERY_TERMS`] words.
pub fn fts_query(text: &str) -> Result<Option<String>, String> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(format!("search text is at most {MAX_QUERY_BYTES} bytes"));
    }
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.len() > MAX_QUERY_TERMS {
        return Err(format!("a search uses at most {MAX_QUERY_TERMS} words"));
    }
    if words.is_empty() {
        return Ok(None);
    }
    // Only letters and digits remain, so no quote needs escaping.
    Ok(Some(
        words
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sort {
    /// bm25, best first (lower score first).
    Relevance,
    /// Cheapest first.
    Price,
    /// Most expensive first.
    PriceDesc,
    /// Newest first.
    Newest,
}

/// Where the previous page ended, and what keeps the pages of one search
/// consistent: the listing id horizon of the first page (listings published
/// later never slip in) and the index it was served at (a later page on a
/// node that lags waits until it has caught up).
///
/// Price and newest orders resume after the last (key, id): those keys do
/// not move when listings arrive. bm25 scores do (every new listing changes
/// the corpus statistics, and with them the order of older listings), so a
/// relevance cursor instead carries the ids already returned and the next
/// page is the best-ranked of the rest: no listing is repeated or skipped
/// whatever is published in between. That list is what caps relevance
/// paging at [`MAX_RELEVANCE_DEPTH`] results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Fingerprint of the query the cursor belongs to.
    pub query: [u8; 8],
    /// Largest listing id the first page could see.
    pub max_id: u64,
    /// Applied index of the first page.
    pub min_index: u64,
    /// Sort key of the last result (bm25 score bits, or the price).
    pub last_key: SortKey,
    /// Id of the last result.
    pub last_id: u64,
    /// Relevance order only: the ids returned so far ([`pack_ids`]).
    pub seen: Vec<u8>,
}

/// Deepest a relevance-ordered search pages (results returned in all).
pub const MAX_RELEVANCE_DEPTH: usize = 10_000;

/// Packs listing ids as sorted LEB128 deltas (1 or 2 bytes each in a
/// dense catalogue).
#[must_use]
pub fn pack_ids(ids: &std::collections::BTreeSet<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 2);
    let mut previous = 0u64;
    for id in ids {
        let mut delta = id - previous;
        previous = *id;
        loop {
            let byte = u8::try_from(delta & 0x7f).unwrap_or(0);
            delta >>= 7;
            if delta == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// Reads ids packed by [`pack_ids`].
///
/// # Errors
/// A truncated or overlong encoding.
pub fn unpack_ids(bytes: &[u8]) -> Result<std::collections::BTreeSet<u64>, String> {
    let bad = || "the cursor is not one this service gave out".to_owned();
    let mut ids = std::collections::BTreeSet::new();
    let mut previous = 0u64;
    let mut delta = 0u64;
    let mut shift = 0u32;
    for byte in bytes {
        if shift > 63 {
            return Err(bad());
        }
        delta |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            previous = previous.checked_add(delta).ok_or_else(bad)?;
            ids.insert(previous);
            delta = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    if shift != 0 {
        return Err(bad());
    }
    Ok(ids)
}

/// A result's position in its order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum SortKey {
    /// bm25 score.
    Score(f64),
    /// Price in cents.
    Price(u64),
    /// Only the id orders (newest).
    Id,
}

impl Cursor {
    /// The opaque string handed to clients.
    #[must_use]
    pub fn encode(&self) -> String {
        let bytes = bincode::serialize(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor back and checks it belongs to `query`.
    ///
    /// # Errors
    /// Not a cursor this service made, or one of another search.
    pub fn decode(raw: &str, query: [u8; 8]) -> Result<Self, String> {
        let bad = || "the cursor is not one this service gave out".to_owned();
        if raw.len() > 64 * 1024 {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| bad())?;
        let cursor: Cursor = bincode::deserialize(&bytes).map_err(|_| bad())?;
        if cursor.query != query {
            return Err(
                "the cursor belongs to a different search; repeat the search it came from".into(),
            );
        }
        Ok(cursor)
    }
}

/// Fingerprint of everything that defines a search's result set and order.
#[must_use]
pub fn query_fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(title: &str) -> ListingText {
        ListingText {
            title: title.into(),
            description: String::new(),
            topic: String::new(),
            tags: vec![],
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn titles_are_checked() {
        assert!(text("").normalized().is_err());
        assert!(text("   ").normalized().is_err());
        assert!(text(&"x".repeat(1 << 20)).normalized().is_err());
        assert!(text("bad\u{0}title").normalized().is_err());
        let ok = text("  A Wizard of Earthsea ").normalized().expect("valid");
        assert_eq!(ok.title, "A Wizard of Earthsea");
        assert_eq!(ok.topic, DEFAULT_TOPIC);
    }

    #[test]
    fn file_facts_are_checked() {
        let ok = FileFacts {
            size: 10,
            chunk_size: 1 << 20,
            merkle_root: [0; 32],
        };
        assert!(ok.validate().is_ok());
        assert!(FileFacts { size: 0, ..ok }.validate().is_err());
        assert!(FileFacts {
            chunk_size: 5000,
            ..ok
        }
        .validate()
        .is_err());
        assert!(FileFacts {
            chunk_size: 1024,
            ..ok
        }
        .validate()
        .is_err());
        assert!(FileFacts {
            size: MAX_FILE_SIZE + 1,
            ..ok
        }
        .validate()
        .is_err());
        assert!(merkle_root(&[1; 31]).is_err());
    }

    #[test]
    fn any_text_becomes_a_safe_query() {
        assert_eq!(fts_query("").expect("ok"), None);
        assert_eq!(fts_query(" \"*( ").expect("ok"), None);
        assert_eq!(
            fts_query("Earth-sea \"NEAR(\" title:x OR")
                .expect("ok")
                .as_deref(),
            Some("\"earth\" \"sea\" \"near\" \"title\" \"x\" \"or\"")
        );
        assert!(fts_query(&"a ".repeat(200)).is_err());
        assert!(fts_query(&"a".repeat(300)).is_err());
    }

    #[test]
    fn cursors_round_trip_and_stay_with_their_query() {
        let q = query_fingerprint(&["earthsea", "general"]);
        let c = Cursor {
            query: q,
            max_id: 99,
            min_index: 7,
            last_key: SortKey::Score(-1.25),
            last_id: 42,
            seen: pack_ids(&[3, 42, 1000, 1_000_000].into_iter().collect()),
        };
        assert_eq!(Cursor::decode(&c.encode(), q).expect("decodes"), c);
        let other = query_fingerprint(&["earthsea", "fiction"]);
        assert!(Cursor::decode(&c.encode(), other).is_err());
        assert!(Cursor::decode("not a cursor", q).is_err());
        assert_eq!(
            unpack_ids(&c.seen).expect("ids"),
            [3, 42, 1000, 1_000_000].into_iter().collect()
        );
        assert!(unpack_ids(&[0x80]).is_err());
        assert!(unpack_ids(&[0xff; 11]).is_err());
        assert_ne!(
            query_fingerprint(&["ab", "c"]),
            query_fingerprint(&["a", "bc"])
        );
    }
}
