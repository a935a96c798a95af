//! One error idiom for both stores: functions return [`Result`], whose error is either a raw
//! sqlx error (still inspectable, e.g. by the PostgreSQL store's lost-connection retry) or a
//! decided `StoreError`; `?` converts both ways, and the conversion to `StoreError` at the
//! trait boundary classifies the sqlx error ([`classify`]).
//!
//! Messages never carry the database URL or path, bound parameters, or stored values: the
//! databases' own message text can quote an offending value, so only codes, constraint and
//! column names are kept.

use sqlx::error::DatabaseError;
use stackyard_core::store::{
    ApprovalError, CreateStackError, DomainError, EnvBatchError, PromoteError, ReleaseError,
    RestartError, StoreError,
};

#[derive(Debug)]
pub enum Error {
    Db(sqlx::Error),
    Store(StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
            Error::Db(e) => classify(&e),
            Error::Store(e) => e,
        }
    }
}

impl From<Error> for stackyard_core::store::CreateResourceError {
    fn from(e: Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<Error> for CreateStackError {
    fn from(e: Error) -> Self {
        CreateStackError::Store(e.into())
    }
}

impl From<Error> for ReleaseError {
    fn from(e: Error) -> Self {
        ReleaseError::Store(e.into())
    }
}

impl From<Error> for PromoteError {
    fn from(e: Error) -> Self {
        PromoteError::Store(e.into())
    }
}

impl From<Error> for ApprovalError {
    fn from(e: Error) -> Self {
        ApprovalError::Promote(e.into())
    }
}

impl From<Error> for DomainError {
    fn from(e: Error) -> Self {
        DomainError::Store(e.into())
    }
}

impl From<Error> for RestartError {
    fn from(e: Error) -> Self {
        RestartError::Store(e.into())
    }
}

impl From<Error> for EnvBatchError {
    fn from(e: Error) -> Self {
        EnvBatchError::Store(e.into())
    }
}

/// A decode failure naming what could not be read, never its value.
pub fn corrupt(what: impl Into<String>) -> Error {
    Error::Store(StoreError::Corrupt(what.into()))
}

/// A stored enum or identifier that must parse; a failure names what, never the value.
pub fn parsed<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| corrupt(format!("stored {what} is not valid")))
}

/// JSON text of a value we built ourselves (key lists, change maps, specs).
pub fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|_| corrupt("a record could not be encoded as JSON"))
}

/// JSON text we stored. serde_json's messages can quote the input, so they are dropped.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|_| corrupt(format!("stored {what} is not valid JSON")))
}

/// Whether `e` violates a unique constraint (`constraint`, when the database names it).
pub fn is_unique_violation(e: &Error, constraint: &str) -> bool {
    match e {
        Error::Db(sqlx::Error::Database(d)) => {
            d.is_unique_violation() && d.constraint().is_none_or(|c| c == constraint)
        }
        _ => false,
    }
}

/// Whether the connection itself failed (dead socket, the server ended the session): the
/// statement did not complete and the connection is unusable, so a transaction start or a
/// pure read may be tried again on another connection.
pub fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) if is_postgres(d.as_ref()) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

fn is_postgres(d: &dyn DatabaseError) -> bool {
    d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
}

/// What a sqlx error means for the caller: a lock wait over the bound, an unavailable or
/// failing database, or data we cannot read.
pub fn classify(e: &sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) if is_postgres(d.as_ref()) => postgres_code(d.as_ref()),
        sqlx::Error::Database(d) => sqlite_code(d.as_ref()),
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable("timed out waiting for a database connection".into())
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable("the connection pool is closed".into()),
        sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable("the database connection worker stopped".into())
        }
        sqlx::Error::Io(io) => {
            StoreError::Unavailable(format!("I/O error talking to the database ({})", io.kind()))
        }
        sqlx::Error::Tls(_) => StoreError::Unavailable("TLS error talking to the database".into()),
        sqlx::Error::Protocol(_) => {
            StoreError::Unavailable("the database connection broke mid-message".into())
        }
        sqlx::Error::Configuration(_) => {
            StoreError::Unavailable("the database connection settings are not valid".into())
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

fn postgres_code(d: &dyn DatabaseError) -> StoreError {
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

fn sqlite_code(d: &dyn DatabaseError) -> StoreError {
    // Primary result codes are the low byte of an extended code.
    const BUSY: i64 = 5;
    const LOCKED: i64 = 6;
    const CORRUPT: i64 = 11;
    const NOTADB: i64 = 26;
    let code = d.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(-1);
    match code & 0xff {
        BUSY | LOCKED => StoreError::LockTimeout,
        CORRUPT | NOTADB => {
            StoreError::Corrupt(format!("the SQLite file is damaged (code {code})"))
        }
        // SQLite's messages name tables and columns, never bound values.
        _ => StoreError::Unavailable(format!("SQLite error {code}: {}", d.message())),
    }
}

/// A migration failure, without the database's message text (it can quote values).
pub fn migration_failed(database: &str, e: &sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    let detail = match e {
        M::Execute(inner) | M::ExecuteMigration(inner, _) => match classify(inner) {
            StoreError::Unavailable(m) | StoreError::Corrupt(m) => m,
            other => other.to_string(),
        },
        // The others name migration versions only.
        other => other.to_string(),
    };
    StoreError::Unavailable(format!(
        "running the {database} migrations failed: {detail}"
    ))
}
