//! Turning sqlx errors into `StoreError`, and decoding columns without panicking.
//!
//! Messages carry SQLSTATE codes, constraint and column names only: never the URL, bound
//! parameters, or PostgreSQL's own message text (which can quote an offending value, e.g.
//! `invalid input syntax for type json: "…"`).

use sqlx::Row;
use sqlx::postgres::PgRow;
use stackyard_core::store::{CreateStackError, EnvBatchError, StoreError};

/// The store's internal error: a database error not yet classified, or a decided
/// `StoreError`. It lets `?` work on both inside a method; it becomes a `StoreError` at the
/// trait boundary, after retry logic has had a chance to look at the raw sqlx error.
#[derive(Debug)]
pub(crate) enum Error {
    Db(sqlx::Error),
    Store(StoreError),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Db(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => map(&e),
            Error::Store(e) => e,
        }
    }
}

impl From<Error> for CreateStackError {
    fn from(e: Error) -> Self {
        CreateStackError::Store(e.into())
    }
}

impl From<Error> for EnvBatchError {
    fn from(e: Error) -> Self {
        EnvBatchError::Store(e.into())
    }
}

/// A decode failure naming what could not be read, never its value.
pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::Store(StoreError::Corrupt(what.into()))
}

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether the connection itself failed (dead socket, server shut the session down): the
/// statement did not run to completion and the connection is unusable. Used to decide whether
/// a transaction start or a pure read may be retried on another connection.
pub(crate) fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => sqlstate(e).is_some_and(|c| {
            // 08: connection exception; 57P01/02/03: admin shutdown (pg_terminate_backend),
            // crash shutdown, cannot connect now.
            c.starts_with("08") || matches!(c.as_str(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether `e` violates the unique constraint `constraint`.
pub(crate) fn is_unique_violation(e: &Error, constraint: &str) -> bool {
    match e {
        Error::Db(sqlx::Error::Database(d)) => {
            d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// Classifies a sqlx error (see the contract's error mapping).
pub(crate) fn map(e: &sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // lock_not_available (lock_timeout), query_canceled (statement_timeout).
                "55P03" | "57014" => StoreError::LockTimeout,
                "40001" | "40P01" => StoreError::Unavailable(format!(
                    "a concurrent transaction conflicted (SQLSTATE {code}); retry"
                )),
                c if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03") => {
                    StoreError::Unavailable(format!(
                        "the database connection was lost (SQLSTATE {code})"
                    ))
                }
                c if c.starts_with("53") => StoreError::Unavailable(format!(
                    "the database is out of resources (SQLSTATE {code})"
                )),
                c if c.starts_with("23") => StoreError::Corrupt(format!(
                    "a database constraint was violated (SQLSTATE {code}{})",
                    d.constraint()
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                )),
                _ => StoreError::Unavailable(format!(
                    "the database refused a statement (SQLSTATE {code})"
                )),
            }
        }
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable("timed out waiting for a database connection".into())
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable("the connection pool is closed".into()),
        sqlx::Error::Io(io) => {
            StoreError::Unavailable(format!("I/O error talking to the database ({})", io.kind()))
        }
        sqlx::Error::Tls(_) => StoreError::Unavailable("TLS error talking to the database".into()),
        sqlx::Error::Protocol(_) => {
            StoreError::Unavailable("the database connection broke mid-message".into())
        }
        sqlx::Error::Configuration(_) => {
            StoreError::Unavailable("the PostgreSQL connection settings are not valid".into())
        }
        sqlx::Error::BeginFailed | sqlx::Error::InvalidSavePointStatement => {
            StoreError::Unavailable("could not start a database transaction".into())
        }
        sqlx::Error::RowNotFound => StoreError::Corrupt("an expected row is missing".into()),
        sqlx::Error::ColumnDecode { index, .. } => {
            StoreError::Corrupt(format!("column {index} could not be decoded"))
        }
        sqlx::Error::ColumnNotFound(name) => {
            StoreError::Corrupt(format!("column {name} is missing"))
        }
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => {
            StoreError::Corrupt("a stored value could not be decoded".into())
        }
        _ => StoreError::Unavailable("the database failed".into()),
    }
}

/// A migration failure, without PostgreSQL's message text.
pub(crate) fn migrate_message(e: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(inner) | M::ExecuteMigration(inner, _) => {
            let detail = match map(inner) {
                StoreError::Unavailable(m) | StoreError::Corrupt(m) => m,
                other => other.to_string(),
            };
            format!("running the PostgreSQL migrations failed: {detail}")
        }
        // The others name migration versions only.
        other => format!("running the PostgreSQL migrations failed: {other}"),
    }
}

/// One column of a row; a failure names the column only.
pub(crate) fn col<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .map_err(|_| corrupt(format!("column `{name}` could not be decoded")))
}

/// A JSON column selected as text (`col::text AS name`). serde_json's messages can quote the
/// input, so they are dropped.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &PgRow, name: &str) -> Result<T> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text)
        .map_err(|_| corrupt(format!("column `{name}` does not hold the expected JSON")))
}

/// A stored enum or identifier that must parse; a failure names what, never the value.
pub(crate) fn parsed<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| corrupt(format!("stored {what} is not valid")))
}

/// JSON text of a value we built ourselves (key lists, change maps, metadata).
pub(crate) fn to_json_text<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|_| corrupt("a record could not be encoded as JSON"))
}
