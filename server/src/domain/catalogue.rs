//! Catalogue rules: what a listing may say, how user text becomes an FTS5
//! query that can never be a syntax error, and the search cursor.
//!
//! Pure: no I/O. The state machine runs [`ListingText::normalized`] and
//! [`FileFacts::validate`] again on apply, so a bad command from an old or
//! buggy proposer cannot enter the state.

use std::collections::BTreeMap;

use agora_proto::amount::MAX_AMOUNT;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Most tags on a listing.
pub const MAX_TAGS: usize = 16;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 32;
/// Most attributes on a listing.
pub const MAX_ATTRIBUTES: usize = 16;
/// Longest attribute key (`[a-z0-9_-]`).
pub const MAX_ATTRIBUTE_KEY: usize = 32;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 200;
/// Longest topic name (`[a-z0-9_-]`).
pub const MAX_TOPIC: usize = 32;
/// Longest topic description, in characters.
pub const MAX_TOPIC_DESCRIPTION_CHARS: usize = 200;
/// The topic of a listing that names none.
pub const DEFAULT_TOPIC: &str = "general";
/// Largest file a listing may describe (1 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size (a chunk must fit a gRPC message with room to spare).
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;
/// Longest search text, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most words a search uses.
pub const MAX_QUERY_TERMS: usize = 16;
/// Longest presence endpoint, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 256;

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

/// Checks a title.
///
/// # Errors
/// When empty or longer than [`MAX_TITLE_CHARS`].
pub fn title(raw: &str) -> Result<String, String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("a listing needs a title".into());
    }
    if t.chars().count() > MAX_TITLE_CHARS {
        return Err(format!("a title has at most {MAX_TITLE_CHARS} characters"));
    }
    no_control(t, "the title")?;
    Ok(t.to_owned())
}

/// Checks a description.
///
/// # Errors
/// When longer than [`MAX_DESCRIPTION_CHARS`].
pub fn description(raw: &str) -> Result<String, String> {
    let d = raw.trim();
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "a description has at most {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    Ok(d.to_owned())
}

fn no_control(s: &str, what: &str) -> Result<(), String> {
    if s.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

/// A topic name as stored: lower case, `[a-z0-9_-]`, 1..=32.
///
/// # Errors
/// When it breaks those rules.
pub fn topic_name(raw: &str) -> Result<String, String> {
    let t = raw.trim().to_lowercase();
    if t.is_empty() || t.len() > MAX_TOPIC || !t.bytes().all(is_name_byte) {
        return Err(format!(
            "a topic name has 1 to {MAX_TOPIC} of the characters a-z, 0-9, '_' and '-' (got {raw:?})"
        ));
    }
    Ok(t)
}

fn topic_or_default(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Ok(DEFAULT_TOPIC.to_owned())
    } else {
        topic_name(raw)
    }
}

/// Checks a topic's description.
///
/// # Errors
/// When too long.
pub fn topic_description(raw: &str) -> Result<String, String> {
    let d = raw.trim();
    if d.chars().count() > MAX_TOPIC_DESCRIPTION_CHARS {
        return Err(format!(
            "a topic description has at most {MAX_TOPIC_DESCRIPTION_CHARS} characters"
        ));
    }
    Ok(d.to_owned())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

/// Normalizes tags: trimmed, lower case, duplicates dropped.
///
/// # Errors
/// Too many, empty or too long tags.
pub fn tags(raw: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        let t = tag.trim().to_lowercase();
        if t.is_empty() || t.chars().count() > MAX_TAG_CHARS {
            return Err(format!(
                "a tag has 1 to {MAX_TAG_CHARS} characters (got {tag:?})"
            ));
        }
        no_control(&t, "a tag")?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(format!("a listing has at most {MAX_TAGS} tags"));
    }
    Ok(out)
}

/// Normalizes attributes: lower-case keys, trimmed values.
///
/// # Errors
/// Too many attributes, or a bad key or value.
pub fn attributes(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    if raw.len() > MAX_ATTRIBUTES {
        return Err(format!("a listing has at most {MAX_ATTRIBUTES} attributes"));
    }
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        let k = key.trim().to_lowercase();
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY || !k.bytes().all(is_name_byte) {
            return Err(format!(
                "an attribute name has 1 to {MAX_ATTRIBUTE_KEY} of the characters a-z, 0-9, '_' and '-' (got {key:?})"
            ));
        }
        let v = value.trim();
        if v.chars().count() > MAX_ATTRIBUTE_VALUE_CHARS {
            return Err(format!(
                "the attribute {k:?} is longer than {MAX_ATTRIBUTE_VALUE_CHARS} characters"
            ));
        }
        no_control(v, "an attribute value")?;
        if out.insert(k.clone(), v.to_owned()).is_some() {
            return Err(format!("the attribute {k:?} is given twice"));
        }
    }
    Ok(out)
}

/// Checks a price in cents.
///
/// # Errors
/// Above [`MAX_AMOUNT`].
pub fn price(cents: u64) -> Result<u64, String> {
    if cents > MAX_AMOUNT {
        return Err(format!(
            "a price is at most {}",
            agora_proto::amount::format_amount(MAX_AMOUNT)
        ));
    }
    Ok(cents)
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

/// Checks a presence endpoint (`host:port`).
///
/// # Errors
/// Empty, too long, or not `host:port`.
pub fn endpoint(raw: &str) -> Result<String, String> {
    let e = raw.trim();
    let valid = e.len() <= MAX_ENDPOINT_BYTES
        && e.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.chars().any(|c| c.is_whitespace() || c.is_control())
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if !valid {
        return Err(format!(
            "an endpoint is host:port, at most {MAX_ENDPOINT_BYTES} bytes (got {raw:?})"
        ));
    }
    Ok(e.to_owned())
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
    fn tags_and_attributes_are_normalized() {
        assert_eq!(
            tags(&["Fantasy".into(), "fantasy ".into(), "EPUB".into()]).expect("valid"),
            vec!["fantasy".to_owned(), "epub".to_owned()]
        );
        assert!(tags(&[String::new()]).is_err());
        assert!(tags(&(0..17).map(|i| format!("t{i}")).collect::<Vec<_>>()).is_err());
        let attrs: BTreeMap<String, String> =
            [("Author".to_owned(), " Le Guin ".to_owned())].into();
        assert_eq!(
            attributes(&attrs)
                .expect("valid")
                .get("author")
                .map(String::as_str),
            Some("Le Guin")
        );
        let bad: BTreeMap<String, String> = [("a b".to_owned(), "x".to_owned())].into();
        assert!(attributes(&bad).is_err());
        let twice: BTreeMap<String, String> = [
            ("Year".to_owned(), "1".to_owned()),
            ("year".to_owned(), "2".to_owned()),
        ]
        .into();
        assert!(attributes(&twice).is_err());
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
    fn endpoints_are_host_and_port() {
        assert!(endpoint("127.0.0.1:4000").is_ok());
        assert!(endpoint("[::1]:4000").is_ok());
        assert!(endpoint("host:0").is_err());
        assert!(endpoint("no-port").is_err());
        assert!(endpoint(":80").is_err());
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
