//! A digest of the replicated state, equal on every node at the same applied
//! index. Rows are hashed as SQLite renders them with `quote()`, in sorted
//! order, table by table, so the digest depends only on the data.

use sqlx::SqliteConnection;

use super::replicated_tables;

/// BLAKE3 over every replicated table's rows, as hex.
///
/// Call it inside a read transaction so the rows and the applied index it is
/// reported with belong to one moment.
///
/// # Errors
/// Storage errors.
pub async fn state_digest(conn: &mut SqliteConnection) -> Result<String, sqlx::Error> {
    let tables = replicated_tables(conn, "main").await?;
    tables_digest(conn, &tables).await
}

/// BLAKE3 over the rows of `tables` (in the given order), as hex.
///
/// # Errors
/// Storage errors.
pub async fn tables_digest(
    conn: &mut SqliteConnection,
    tables: &[String],
) -> Result<String, sqlx::Error> {
    let mut hasher = blake3::Hasher::new();
    for table in tables {
        let columns: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .fetch_all(&mut *conn)
        .await?;
        if columns.is_empty() {
            continue;
        }
        let row_expr = columns
            .iter()
            .map(|(c,)| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT {row_expr} AS r FROM \"{table}\" ORDER BY r"
        ))
        .fetch_all(&mut *conn)
        .await?;
        hasher.update(table.as_bytes());
        hasher.update(&[0]);
        for (row,) in rows {
            hasher.update(row.as_bytes());
            hasher.update(&[0]);
        }
        hasher.update(&[1]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}
