//! Turning sqlx errors into `StoreError`, and decoding columns without panicking.
//!
//! Messages never carry the database path, bound parameters or stored values: SQLite's own
//! messages name tables and columns only, and decode failures are reported by column name.

use sqlx::Row;
use sqlx::error::ErrorKind;
use sqlx::sqlite::SqliteRow;
use stackyard_core::store::StoreError;

// Primary SQLite result codes (the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_NOTADB: i64 = 26;

/// Maps an error from a statement or a reader-pool acquire.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    map(&e, false)
}

/// Maps an error from the writer pool, where waiting for the connection *is* waiting for the
/// write lock: a pool timeout there is `LockTimeout`, not `Unavailable`.
pub(crate) fn writer_err(e: sqlx::Error) -> StoreError {
    map(&e, true)
}

pub(crate) fn map(e: &sqlx::Error, writer: bool) -> StoreError {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(-1);
            match code & 0xff {
                SQLITE_BUSY | SQLITE_LOCKED => StoreError::LockTimeout,
                SQLITE_CORRUPT | SQLITE_NOTADB => {
                    StoreError::Corrupt(format!("the SQLite file is damaged (code {code})"))
                }
                _ => StoreError::Unavailable(format!("SQLite error {code}: {}", d.message())),
            }
        }
        sqlx::Error::PoolTimedOut if writer => StoreError::LockTimeout,
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable("timed out waiting for a database connection".into())
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable("the connection pool is closed".into()),
        sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable("the SQLite connection worker stopped".into())
        }
        sqlx::Error::Io(io) => StoreError::Unavailable(format!("I/O error ({})", io.kind())),
        sqlx::Error::Configuration(_) => {
            StoreError::Unavailable("the SQLite connection settings are not valid".into())
        }
        sqlx::Error::Protocol(_)
        | sqlx::Error::BeginFailed
        | sqlx::Error::InvalidSavePointStatement => {
            StoreError::Unavailable("SQLite transaction handling failed".into())
        }
        sqlx::Error::RowNotFound => StoreError::Corrupt("an expected row is missing".into()),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => {
            StoreError::Corrupt("a stored value could not be decoded".into())
        }
        _ => StoreError::Unavailable("the SQLite database failed".into()),
    }
}

/// Whether `e` is a UNIQUE / PRIMARY KEY violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == ErrorKind::UniqueViolation)
}

/// One column of a row, decoding failures reported as `Corrupt` naming only the column.
pub(crate) fn col<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name)
        .map_err(|_| StoreError::Corrupt(format!("column `{name}` could not be decoded")))
}

/// A JSON column. serde_json's messages can quote the offending input, so they are dropped.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    name: &str,
) -> Result<T, StoreError> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text).map_err(|_| {
        StoreError::Corrupt(format!("column `{name}` does not hold the expected JSON"))
    })
}

/// Parses a stored enum / identifier, reporting the column, not the value.
pub(crate) fn parsed<T>(value: Option<T>, what: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Corrupt(format!("stored {what} is not valid")))
}
