//! What a listing may say: the catalogue's rules on titles, descriptions,
//! topics, tags, attributes, prices and presence endpoints. Pure; the
//! cluster enforces them (and normalizes with them) when a listing is
//! published or edited, and the peer checks a listing with the same
//! functions before it spends time hashing a large file.

use std::collections::BTreeMap;

use crate::amount::MAX_AMOUNT;

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
pub use crate::merkle::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
/// Longest search text, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most words a search uses.
pub const MAX_QUERY_TERMS: usize = 16;
/// Longest presence endpoint, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 256;

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

/// A listing's topic: the name given, or [`DEFAULT_TOPIC`] for none.
///
/// # Errors
/// A name that breaks the rules of [`topic_name`].
pub fn topic_or_default(raw: &str) -> Result<String, String> {
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
        let k = attribute_name(key)?;
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

/// An attribute name as stored: lower case, `[a-z0-9_-]`, 1..=32.
///
/// # Errors
/// When it breaks those rules.
pub fn attribute_name(raw: &str) -> Result<String, String> {
    let k = raw.trim().to_lowercase();
    if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY || !k.bytes().all(is_name_byte) {
        return Err(format!(
            "an attribute name has 1 to {MAX_ATTRIBUTE_KEY} of the characters a-z, 0-9, '_' and '-' (got {raw:?})"
        ));
    }
    Ok(k)
}

/// Checks a price in cents.
///
/// # Errors
/// Above [`MAX_AMOUNT`].
pub fn price(cents: u64) -> Result<u64, String> {
    if cents > MAX_AMOUNT {
        return Err(format!(
            "a price is at most {}",
            crate::amount::format_amount(MAX_AMOUNT)
        ));
    }
    Ok(cents)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn endpoints_are_host_and_port() {
        assert!(endpoint("127.0.0.1:4000").is_ok());
        assert!(endpoint("[::1]:4000").is_ok());
        assert!(endpoint("host:0").is_err());
        assert!(endpoint("no-port").is_err());
        assert!(endpoint(":80").is_err());
    }
}
