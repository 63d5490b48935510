//! Queries of the catalogue: listings, topics, presence, and search.
//!
//! The full-text index (`listings_fts`) is kept in step with `listings` by
//! triggers (see `migrations/node/0004_catalogue.sql`), so the writes here
//! touch only ordinary tables.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqliteExecutor};

use super::{to_i64, to_u64};
use crate::domain::catalogue::{FileFacts, ListingText, Sort, SortKey};

/// A listing as read back, with its seller's name and presence.
#[derive(Debug, Clone, PartialEq)]
pub struct ListingRow {
    /// Listing id.
    pub id: u64,
    /// Seller's user id.
    pub seller_id: u64,
    /// Seller's name.
    pub seller: String,
    /// What the seller says.
    pub text: ListingText,
    /// Size, chunking, root.
    pub facts: FileFacts,
    /// Cents.
    pub price: u64,
    /// Published (leader's clock).
    pub created_ms: u64,
    /// Last changed.
    pub updated_ms: u64,
    /// Log index of the last change.
    pub updated_index: u64,
    /// On sale.
    pub active: bool,
    /// The seller holds a presence lease.
    pub seller_online: bool,
    /// Sales the seller completed.
    pub seller_sales: u64,
    /// Disputes the seller lost.
    pub seller_strikes: u64,
}

/// Columns every listing read selects, in [`listing_from_row`]'s order.
const LISTING_COLUMNS: &str = "l.id, l.seller_id, u.username, l.title, l.description, l.topic, \
     l.tags, l.attributes, l.size, l.chunk_size, l.merkle_root, l.price, l.created_ms, \
     l.updated_ms, l.updated_index, l.active, coalesce(p.online, 0) AS online, u.sales, u.strikes";

/// Joins every listing read needs.
const LISTING_JOINS: &str = "JOIN users u ON u.id = l.seller_id \
     LEFT JOIN presence p ON p.user_id = l.seller_id";

fn listing_from_row(row: &SqliteRow) -> Result<ListingRow, sqlx::Error> {
    let tags: String = row.try_get(6)?;
    let attributes: String = row.try_get(7)?;
    let root: Vec<u8> = row.try_get(10)?;
    let chunk_size: i64 = row.try_get(9)?;
    Ok(ListingRow {
        id: to_u64(row.try_get(0)?),
        seller_id: to_u64(row.try_get(1)?),
        seller: row.try_get(2)?,
        text: ListingText {
            title: row.try_get(3)?,
            description: row.try_get(4)?,
            topic: row.try_get(5)?,
            tags: serde_json::from_str(&tags).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            attributes: serde_json::from_str(&attributes)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        },
        facts: FileFacts {
            size: to_u64(row.try_get(8)?),
            chunk_size: u32::try_from(chunk_size).unwrap_or(0),
            merkle_root: root.try_into().unwrap_or([0; 32]),
        },
        price: to_u64(row.try_get(11)?),
        created_ms: to_u64(row.try_get(12)?),
        updated_ms: to_u64(row.try_get(13)?),
        updated_index: to_u64(row.try_get(14)?),
        active: row.try_get::<i64, _>(15)? != 0,
        seller_online: row.try_get::<i64, _>(16)? != 0,
        seller_sales: to_u64(row.try_get(17)?),
        seller_strikes: to_u64(row.try_get(18)?),
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Vectors of strings and string maps always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

/// Stores a new listing; returns its id.
///
/// # Errors
/// Storage errors.
pub async fn insert_listing(
    conn: &mut SqliteConnection,
    seller_id: u64,
    text: &ListingText,
    facts: &FileFacts,
    price: u64,
    index: u64,
    time_ms: u64,
) -> Result<u64, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO listings (seller_id, title, description, topic, tags, attributes, size, \
         chunk_size, merkle_root, price, created_ms, updated_ms, updated_index, active) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, 1) RETURNING id",
    )
    .bind(to_i64(seller_id))
    .bind(&text.title)
    .bind(&text.description)
    .bind(&text.topic)
    .bind(json(&text.tags))
    .bind(json(&text.attributes))
    .bind(to_i64(facts.size))
    .bind(i64::from(facts.chunk_size))
    .bind(&facts.merkle_root[..])
    .bind(to_i64(price))
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .fetch_one(conn)
    .await?;
    Ok(to_u64(id))
}

/// One listing, active or not.
///
/// # Errors
/// Storage errors.
pub async fn listing(
    conn: impl SqliteExecutor<'_>,
    id: u64,
) -> Result<Option<ListingRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {LISTING_COLUMNS} FROM listings l {LISTING_JOINS} WHERE l.id = ?1"
    ))
    .bind(to_i64(id))
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(listing_from_row).transpose()
}

/// The seller and state of a listing, for permission checks on apply.
///
/// # Errors
/// Storage errors.
pub async fn listing_owner(
    conn: impl SqliteExecutor<'_>,
    id: u64,
) -> Result<Option<(u64, bool)>, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT seller_id, active FROM listings WHERE id = ?1")
            .bind(to_i64(id))
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(seller, active)| (to_u64(seller), active != 0)))
}

/// Replaces what the seller says about a listing.
///
/// # Errors
/// Storage errors.
pub async fn update_text(
    conn: &mut SqliteConnection,
    id: u64,
    text: &ListingText,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE listings SET title = ?2, description = ?3, topic = ?4, tags = ?5, \
         attributes = ?6, updated_ms = ?7, updated_index = ?8 WHERE id = ?1",
    )
    .bind(to_i64(id))
    .bind(&text.title)
    .bind(&text.description)
    .bind(&text.topic)
    .bind(json(&text.tags))
    .bind(json(&text.attributes))
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a listing's price.
///
/// # Errors
/// Storage errors.
pub async fn set_price(
    conn: &mut SqliteConnection,
    id: u64,
    price: u64,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE listings SET price = ?2, updated_ms = ?3, updated_index = ?4 WHERE id = ?1",
    )
    .bind(to_i64(id))
    .bind(to_i64(price))
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a listing off sale (the trigger drops it from the index).
///
/// # Errors
/// Storage errors.
pub async fn deactivate(
    conn: &mut SqliteConnection,
    id: u64,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE listings SET active = 0, updated_ms = ?2, updated_index = ?3 WHERE id = ?1 AND active",
    )
    .bind(to_i64(id))
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .execute(conn)
    .await?;
    Ok(())
}

/// A topic: name, description, active listings under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRow {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Active listings filed under it.
    pub listings: u64,
}

/// Whether a topic exists.
///
/// # Errors
/// Storage errors.
pub async fn topic_exists(conn: impl SqliteExecutor<'_>, name: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM topics WHERE name = ?1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// Adds a topic, or changes its description.
///
/// # Errors
/// Storage errors.
pub async fn upsert_topic(
    conn: &mut SqliteConnection,
    name: &str,
    description: &str,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO topics (name, description, created_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET description = excluded.description",
    )
    .bind(name)
    .bind(description)
    .bind(to_i64(time_ms))
    .execute(conn)
    .await?;
    Ok(())
}

/// How many listings (active or not) are filed under a topic. Unpublished
/// listings keep their topic, so a topic in use by any listing stays.
///
/// # Errors
/// Storage errors.
pub async fn listings_in_topic(
    conn: impl SqliteExecutor<'_>,
    name: &str,
) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM listings WHERE topic = ?1")
        .bind(name)
        .fetch_one(conn)
        .await?;
    Ok(to_u64(n))
}

/// Removes a topic; false when there was none.
///
/// # Errors
/// Storage errors.
pub async fn delete_topic(conn: &mut SqliteConnection, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM topics WHERE name = ?1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Every topic, by name, with its count of active listings.
///
/// # Errors
/// Storage errors.
pub async fn topics(conn: impl SqliteExecutor<'_>) -> Result<Vec<TopicRow>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT t.name, t.description, \
         (SELECT count(*) FROM listings l WHERE l.topic = t.name AND l.active) \
         FROM topics t ORDER BY t.name",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, description, n)| TopicRow {
            name,
            description,
            listings: to_u64(n),
        })
        .collect())
}

/// Whether a user exists and is not suspended: `None` when there is no
/// such user.
///
/// # Errors
/// Storage errors.
pub async fn user_suspended(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
) -> Result<Option<bool>, sqlx::Error> {
    let row: Option<i64> = sqlx::query_scalar("SELECT suspended FROM users WHERE id = ?1")
        .bind(to_i64(user_id))
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|s| s != 0))
}

/// A user id by canonical name.
///
/// # Errors
/// Storage errors.
pub async fn user_id_by_name(
    conn: impl SqliteExecutor<'_>,
    name: &str,
) -> Result<Option<u64>, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = ?1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    Ok(id.map(to_u64))
}

/// A seller's presence as the replicated state has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    /// The seller.
    pub user_id: u64,
    /// Where it serves files.
    pub endpoint: String,
    /// Whether it holds a lease.
    pub online: bool,
    /// Log index of the last change.
    pub changed_index: u64,
}

/// Marks a seller online at `endpoint`, or offline (`None`).
///
/// # Errors
/// Storage errors.
pub async fn set_presence(
    conn: &mut SqliteConnection,
    user_id: u64,
    endpoint: Option<&str>,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    match endpoint {
        Some(endpoint) => {
            sqlx::query(
                "INSERT INTO presence (user_id, endpoint, online, changed_ms, changed_index) \
                 VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT (user_id) DO UPDATE SET \
                 endpoint = excluded.endpoint, online = 1, changed_ms = excluded.changed_ms, \
                 changed_index = excluded.changed_index",
            )
            .bind(to_i64(user_id))
            .bind(endpoint)
            .bind(to_i64(time_ms))
            .bind(to_i64(index))
            .execute(conn)
            .await?;
        }
        None => {
            sqlx::query(
                "UPDATE presence SET online = 0, changed_ms = ?2, changed_index = ?3 \
                 WHERE user_id = ?1 AND online",
            )
            .bind(to_i64(user_id))
            .bind(to_i64(time_ms))
            .bind(to_i64(index))
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// Every seller online in the replicated state (what a new leader starts
/// its lease table from).
///
/// # Errors
/// Storage errors.
pub async fn online_sellers(
    conn: impl SqliteExecutor<'_>,
) -> Result<Vec<PresenceRow>, sqlx::Error> {
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT user_id, endpoint, changed_index FROM presence WHERE online ORDER BY user_id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, endpoint, changed_index)| PresenceRow {
            user_id: to_u64(user_id),
            endpoint,
            online: true,
            changed_index: to_u64(changed_index),
        })
        .collect())
}

/// A seller's presence row, if it ever announced.
///
/// # Errors
/// Storage errors.
pub async fn presence(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
) -> Result<Option<PresenceRow>, sqlx::Error> {
    let row: Option<(String, i64, i64)> =
        sqlx::query_as("SELECT endpoint, online, changed_index FROM presence WHERE user_id = ?1")
            .bind(to_i64(user_id))
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(endpoint, online, changed_index)| PresenceRow {
        user_id,
        endpoint,
        online: online != 0,
        changed_index: to_u64(changed_index),
    }))
}

/// Takes a seller offline whose lease lapsed, unless its presence changed
/// after `since_index` (a newer announcement wins); true when it changed.
///
/// # Errors
/// Storage errors.
pub async fn lapse_presence(
    conn: &mut SqliteConnection,
    user_id: u64,
    since_index: u64,
    index: u64,
    time_ms: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE presence SET online = 0, changed_ms = ?3, changed_index = ?4 \
         WHERE user_id = ?1 AND online AND changed_index <= ?2",
    )
    .bind(to_i64(user_id))
    .bind(to_i64(since_index))
    .bind(to_i64(time_ms))
    .bind(to_i64(index))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// What a search asks for, already checked and converted.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// FTS5 match expression (quoted words), or none to browse.
    pub fts: Option<String>,
    /// Only this topic.
    pub topic: Option<String>,
    /// Price bounds, inclusive.
    pub min_price: Option<u64>,
    /// Price bounds, inclusive.
    pub max_price: Option<u64>,
    /// Only this seller.
    pub seller_id: Option<u64>,
    /// Only sellers online.
    pub online_only: bool,
    /// Order.
    pub sort: Sort,
    /// Only listings with an id at or below (the first page's horizon).
    pub max_id: u64,
    /// Where the previous page ended: its last sort key and id (price and
    /// newest orders).
    pub after: Option<(SortKey, u64)>,
    /// Ids already returned (relevance order with text): left out.
    pub exclude: Vec<u64>,
    /// Page size.
    pub limit: u32,
}

/// One search hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The listing.
    pub listing: ListingRow,
    /// bm25 score (lower is better); 0 without text.
    pub score: f64,
}

impl Hit {
    /// The hit's position in `sort`, for the next page's cursor.
    #[must_use]
    pub fn key(&self, sort: Sort, has_text: bool) -> SortKey {
        match sort {
            Sort::Relevance if has_text => SortKey::Score(self.score),
            Sort::Price | Sort::PriceDesc => SortKey::Price(self.listing.price),
            Sort::Relevance | Sort::Newest => SortKey::Id,
        }
    }
}

/// bm25 with the column weights of `listings_fts` (title, description,
/// tags, attribute values): a title match counts most. Called directly
/// rather than through the table's `rank` setting, which costs a quarter
/// more per matching row.
const BM25: &str = "bm25(listings_fts, 10.0, 1.0, 4.0, 2.0)";

/// The largest listing id so far (0 when there is none).
///
/// # Errors
/// Storage errors.
pub async fn max_listing_id(conn: impl SqliteExecutor<'_>) -> Result<u64, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM listings")
        .fetch_one(conn)
        .await?;
    Ok(id.map_or(0, to_u64))
}

/// Runs a search: one page of active listings in the asked order.
///
/// With text, the FTS5 index drives the query and bm25 (with the column
/// weights set in the migration) ranks; ties and every other order are
/// broken by listing id, so the order is total and a cursor (last key, last
/// id) resumes exactly after the previous page.
///
/// # Errors
/// Storage errors.
pub async fn search(
    conn: impl SqliteExecutor<'_>,
    q: &SearchQuery,
) -> Result<Vec<Hit>, sqlx::Error> {
    let unfiltered = q.topic.is_none()
        && q.min_price.is_none()
        && q.max_price.is_none()
        && q.seller_id.is_none()
        && !q.online_only;
    let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {LISTING_COLUMNS}, "));
    if let (Some(fts), Sort::Relevance, true) = (&q.fts, q.sort, unfiltered) {
        // The common case, and the costly one (bm25 over every match): rank
        // inside the full-text index alone, then join only the page.
        b.push(format!("t.score FROM (SELECT rowid AS id, {BM25} AS score FROM listings_fts WHERE listings_fts MATCH "))
            .push_bind(fts.clone())
            .push(" AND rowid <= ")
            .push_bind(to_i64(q.max_id));
        if !q.exclude.is_empty() {
            b.push(" AND rowid NOT IN (SELECT value FROM json_each(")
                .push_bind(json(&q.exclude))
                .push("))");
        }
        b.push(" ORDER BY score LIMIT ")
            .push_bind(i64::from(q.limit))
            .push(") t JOIN listings l ON l.id = t.id ")
            .push(LISTING_JOINS)
            .push(" WHERE l.active ORDER BY t.score, l.id");
        let rows = b.build().fetch_all(conn).await?;
        return hits(&rows);
    }
    if let Some(fts) = &q.fts {
        b.push(format!(
            "{BM25} AS score FROM listings_fts f JOIN listings l ON l.id = f.rowid "
        ));
        b.push(LISTING_JOINS);
        b.push(" WHERE listings_fts MATCH ");
        b.push_bind(fts.clone());
    } else {
        b.push("0.0 AS score FROM listings l ");
        b.push(LISTING_JOINS);
        b.push(" WHERE 1");
    }
    b.push(" AND l.active AND l.id <= ");
    b.push_bind(to_i64(q.max_id));
    if let Some(topic) = &q.topic {
        b.push(" AND l.topic = ").push_bind(topic.clone());
    }
    if let Some(min) = q.min_price {
        b.push(" AND l.price >= ").push_bind(to_i64(min));
    }
    if let Some(max) = q.max_price {
        b.push(" AND l.price <= ").push_bind(to_i64(max));
    }
    if let Some(seller) = q.seller_id {
        b.push(" AND l.seller_id = ").push_bind(to_i64(seller));
    }
    if q.online_only {
        b.push(" AND p.online = 1");
    }
    let has_text = q.fts.is_some();
    match (q.sort, has_text) {
        (Sort::Relevance, true) => {
            if !q.exclude.is_empty() {
                b.push(" AND l.id NOT IN (SELECT value FROM json_each(")
                    .push_bind(json(&q.exclude))
                    .push("))");
            }
            b.push(" ORDER BY score, l.id");
        }
        (Sort::Price | Sort::PriceDesc, _) => {
            let (cmp, dir) = if q.sort == Sort::Price {
                (">", "ASC")
            } else {
                ("<", "DESC")
            };
            if let Some((SortKey::Price(price), id)) = q.after {
                b.push(format!(" AND (l.price {cmp} "))
                    .push_bind(to_i64(price))
                    .push(" OR (l.price = ")
                    .push_bind(to_i64(price))
                    .push(" AND l.id > ")
                    .push_bind(to_i64(id))
                    .push("))");
            }
            b.push(format!(" ORDER BY l.price {dir}, l.id ASC"));
        }
        (Sort::Relevance | Sort::Newest, _) => {
            if let Some((_, id)) = q.after {
                b.push(" AND l.id < ").push_bind(to_i64(id));
            }
            b.push(" ORDER BY l.id DESC");
        }
    }
    b.push(" LIMIT ").push_bind(i64::from(q.limit));
    let rows = b.build().fetch_all(conn).await?;
    hits(&rows)
}

fn hits(rows: &[SqliteRow]) -> Result<Vec<Hit>, sqlx::Error> {
    rows.iter()
        .map(|row| {
            Ok(Hit {
                listing: listing_from_row(row)?,
                score: row.try_get("score")?,
            })
        })
        .collect()
}

/// A seller's listings, newest first, after `before_id`.
///
/// # Errors
/// Storage errors.
pub async fn seller_listings(
    conn: impl SqliteExecutor<'_>,
    seller_id: u64,
    include_inactive: bool,
    before_id: Option<u64>,
    limit: u32,
) -> Result<Vec<ListingRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {LISTING_COLUMNS} FROM listings l {LISTING_JOINS} \
         WHERE l.seller_id = ?1 AND (?2 OR l.active) AND l.id < ?3 \
         ORDER BY l.id DESC LIMIT ?4"
    ))
    .bind(to_i64(seller_id))
    .bind(include_inactive)
    .bind(before_id.map_or(i64::MAX, to_i64))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(listing_from_row).collect()
}

/// Suspends a user (its active listings go off sale, marked to come back)
/// or lifts the suspension (those listings come back on sale).
///
/// # Errors
/// Storage errors.
pub async fn set_suspended(
    conn: &mut SqliteConnection,
    user_id: u64,
    suspended: bool,
    index: u64,
    time_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET suspended = ?2 WHERE id = ?1")
        .bind(to_i64(user_id))
        .bind(suspended)
        .execute(&mut *conn)
        .await?;
    let sql = if suspended {
        "UPDATE listings SET active = 0, suspended = 1, updated_ms = ?2, updated_index = ?3 \
         WHERE seller_id = ?1 AND active"
    } else {
        "UPDATE listings SET active = 1, suspended = 0, updated_ms = ?2, updated_index = ?3 \
         WHERE seller_id = ?1 AND suspended"
    };
    sqlx::query(sql)
        .bind(to_i64(user_id))
        .bind(to_i64(time_ms))
        .bind(to_i64(index))
        .execute(conn)
        .await?;
    Ok(())
}

/// A user's standing: (suspended, sales, strikes, active listings).
///
/// # Errors
/// Storage errors.
pub async fn standing(
    conn: impl SqliteExecutor<'_>,
    user_id: u64,
) -> Result<Option<(bool, u64, u64, u64)>, sqlx::Error> {
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT suspended, sales, strikes, \
         (SELECT COUNT(*) FROM listings WHERE seller_id = users.id AND active) \
         FROM users WHERE id = ?1",
    )
    .bind(to_i64(user_id))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(s, sales, strikes, active)| {
        (s != 0, to_u64(sales), to_u64(strikes), to_u64(active))
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::raft::command::{Actor, Command, ListingEdit, Op, Outcome, Proposal, Rejection};

    struct Db {
        _dir: tempfile::TempDir,
        conn: SqliteConnection,
        index: u64,
    }

    impl Db {
        async fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut conn, _readers) = crate::store::open_state(&dir.path().join("state.db"))
                .await
                .expect("db");
            for (id, name) in [(1, "alice"), (2, "bob")] {
                sqlx::query(
                    "INSERT INTO users (id, username, role, password_file, identity_public_key, \
                     encrypted_identity_key, created_ms) VALUES (?1, ?2, 'user', x'00', x'00', x'00', 0)",
                )
                .bind(id)
                .bind(name)
                .execute(&mut conn)
                .await
                .expect("user");
            }
            Self {
                _dir: dir,
                conn,
                index: 1,
            }
        }

        async fn apply(&mut self, op: Op) -> Outcome {
            self.index += 1;
            let command = Command {
                time_ms: 1_000 + self.index,
                proposals: vec![Proposal { request: None, op }],
            };
            let mut answers = command
                .apply(&mut self.conn, self.index)
                .await
                .expect("applies");
            answers.pop().expect("one").outcome
        }

        async fn publish(
            &mut self,
            seller: u64,
            title: &str,
            description: &str,
            price: u64,
        ) -> u64 {
            let text = ListingText {
                title: title.into(),
                description: description.into(),
                topic: "general".into(),
                tags: vec![],
                attributes: BTreeMap::new(),
            };
            let op = Op::Publish {
                seller_id: seller,
                text,
                facts: FileFacts {
                    size: 100,
                    chunk_size: 4096,
                    merkle_root: [7; 32],
                },
                price,
            };
            match self.apply(op).await {
                Outcome::Listing { listing_id } => listing_id,
                other => panic!("publish: {other:?}"),
            }
        }

        async fn search(
            &mut self,
            text: &str,
            sort: Sort,
            after: Option<(SortKey, u64)>,
            exclude: Vec<u64>,
            max_id: u64,
            limit: u32,
        ) -> Vec<Hit> {
            let q = SearchQuery {
                fts: crate::domain::catalogue::fts_query(text).expect("query"),
                topic: None,
                min_price: None,
                max_price: None,
                seller_id: None,
                online_only: false,
                sort,
                max_id,
                after,
                exclude,
                limit,
            };
            search(&mut self.conn, &q).await.expect("search")
        }

        async fn titles(&mut self, text: &str) -> Vec<String> {
            self.search(text, Sort::Relevance, None, vec![], u64::MAX >> 1, 100)
                .await
                .into_iter()
                .map(|h| h.listing.text.title)
                .collect()
        }
    }

    fn alice() -> Actor {
        Actor {
            user_id: 1,
            admin: false,
        }
    }

    #[tokio::test]
    async fn a_title_match_outranks_a_description_match_and_edits_reindex() {
        let mut db = Db::new().await;
        let in_description = db
            .publish(1, "Sea stories", "an earthsea companion with maps", 100)
            .await;
        let in_title = db.publish(2, "Earthsea", "six novels", 500).await;
        db.publish(2, "Unrelated", "nothing to see", 50).await;
        assert_eq!(db.titles("earthsea").await, vec!["Earthsea", "Sea stories"]);

        // An edit re-indexes: the old word is gone, the new one found.
        let edit = ListingEdit {
            title: Some("Tombs of Atuan".into()),
            ..ListingEdit::default()
        };
        let out = db
            .apply(Op::EditListing {
                listing_id: in_title,
                actor: Actor {
                    user_id: 2,
                    admin: false,
                },
                edit,
            })
            .await;
        assert!(matches!(out, Outcome::Listing { .. }), "{out:?}");
        assert_eq!(db.titles("atuan").await, vec!["Tombs of Atuan"]);
        assert_eq!(db.titles("earthsea").await, vec!["Sea stories"]);

        // Unpublished: out of search, still readable by id.
        db.apply(Op::Unpublish {
            listing_id: in_description,
            actor: alice(),
        })
        .await;
        assert!(db.titles("earthsea").await.is_empty());
        let row = listing(&mut db.conn, in_description)
            .await
            .expect("read")
            .expect("exists");
        assert!(!row.active);
    }

    #[tokio::test]
    async fn only_the_seller_or_an_admin_changes_a_listing() {
        let mut db = Db::new().await;
        let id = db.publish(1, "Alice's file", "", 100).await;
        let out = db
            .apply(Op::Reprice {
                listing_id: id,
                actor: Actor {
                    user_id: 2,
                    admin: false,
                },
                price: 1,
            })
            .await;
        assert!(
            matches!(out, Outcome::Rejected(Rejection::PermissionDenied(_))),
            "{out:?}"
        );
        let out = db
            .apply(Op::Reprice {
                listing_id: id,
                actor: Actor {
                    user_id: 2,
                    admin: true,
                },
                price: 250,
            })
            .await;
        assert!(matches!(out, Outcome::Listing { .. }), "{out:?}");
        let row = listing(&mut db.conn, id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(row.price, 250);
        let out = db
            .apply(Op::Reprice {
                listing_id: 999,
                actor: alice(),
                price: 1,
            })
            .await;
        assert!(
            matches!(out, Outcome::Rejected(Rejection::NotFound(_))),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn topics_must_exist_and_stay_while_used() {
        let mut db = Db::new().await;
        let mut text = ListingText {
            title: "A map".into(),
            description: String::new(),
            topic: "maps".into(),
            tags: vec![],
            attributes: BTreeMap::new(),
        };
        let publish = |text: ListingText| Op::Publish {
            seller_id: 1,
            text,
            facts: FileFacts {
                size: 1,
                chunk_size: 4096,
                merkle_root: [0; 32],
            },
            price: 0,
        };
        let out = db.apply(publish(text.clone())).await;
        assert!(
            matches!(out, Outcome::Rejected(Rejection::NotFound(_))),
            "{out:?}"
        );
        db.apply(Op::AddTopic {
            name: "maps".into(),
            description: "Maps".into(),
        })
        .await;
        assert!(matches!(
            db.apply(publish(text.clone())).await,
            Outcome::Listing { .. }
        ));
        let out = db
            .apply(Op::RemoveTopic {
                name: "maps".into(),
            })
            .await;
        assert!(
            matches!(out, Outcome::Rejected(Rejection::FailedPrecondition(_))),
            "{out:?}"
        );
        text.topic = "general".into();
        let out = db
            .apply(Op::RemoveTopic {
                name: "general".into(),
            })
            .await;
        assert!(matches!(out, Outcome::Rejected(_)), "{out:?}");
    }

    #[tokio::test]
    async fn pages_cover_every_listing_once_while_new_ones_arrive() {
        let mut db = Db::new().await;
        for i in 0..230u64 {
            // Same words, different lengths and prices: many score ties.
            let title = format!(
                "common word{}",
                " x".repeat(usize::try_from(i % 7).expect("small"))
            );
            db.publish(1 + i % 2, &title, "", (i * 37) % 11).await;
        }
        for sort in [Sort::Relevance, Sort::Price, Sort::PriceDesc, Sort::Newest] {
            let max_id = max_listing_id(&mut db.conn).await.expect("max");
            let mut seen = std::collections::BTreeSet::new();
            let mut after = None;
            loop {
                let exclude = seen.iter().copied().collect();
                let page = db.search("common", sort, after, exclude, max_id, 17).await;
                // A listing published between pages does not show up.
                db.publish(2, "common word late", "", 3).await;
                for hit in &page {
                    assert!(
                        seen.insert(hit.listing.id),
                        "{sort:?}: {} twice",
                        hit.listing.id
                    );
                }
                match page.last() {
                    Some(last) if page.len() == 17 => {
                        after = Some((last.key(sort, true), last.listing.id));
                    }
                    _ => break,
                }
            }
            // Every listing matches, and ids count from 1.
            assert_eq!(seen.len() as u64, max_id, "{sort:?}");
            assert!(seen.iter().all(|id| *id <= max_id));
        }
    }

    #[tokio::test]
    async fn a_lapse_does_not_undo_a_newer_announcement() {
        let mut db = Db::new().await;
        db.apply(Op::SetPresence {
            user_id: 1,
            endpoint: Some("127.0.0.1:5000".into()),
        })
        .await;
        let first = presence(&mut db.conn, 1).await.expect("read").expect("row");
        db.apply(Op::SetPresence {
            user_id: 1,
            endpoint: Some("127.0.0.1:5001".into()),
        })
        .await;
        // A lapse for the first announcement crosses the second in the log.
        db.apply(Op::LapsePresence {
            lapses: vec![(1, first.changed_index)],
        })
        .await;
        let now = presence(&mut db.conn, 1).await.expect("read").expect("row");
        assert!(now.online);
        assert_eq!(now.endpoint, "127.0.0.1:5001");
        db.apply(Op::LapsePresence {
            lapses: vec![(1, now.changed_index)],
        })
        .await;
        assert!(
            !presence(&mut db.conn, 1)
                .await
                .expect("read")
                .expect("row")
                .online
        );
    }
}
