//! A fresh database of either backend for tests that start a whole server, and
//! [`both_backends!`](crate::both_backends) to run one test body on each.

use crate::{pg, sqlite};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for one test, dropped with this value.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _sqlite: Option<sqlite::SqliteTestDb>,
    _pg: Option<pg::PgTestDb>,
}

impl TestDb {
    /// `None` (the harness printed why) when PostgreSQL is unavailable outside CI.
    pub async fn fresh(backend: Backend) -> Option<TestDb> {
        let (sqlite, pg) = match backend {
            Backend::Sqlite => (Some(sqlite::fresh()), None),
            Backend::Postgres => (None, Some(pg::fresh().await?)),
        };
        let url = match (&sqlite, &pg) {
            (Some(db), _) => db.url.clone(),
            (_, Some(db)) => db.url.clone(),
            _ => unreachable!("one backend is always set"),
        };
        Some(TestDb {
            url,
            backend,
            _sqlite: sqlite,
            _pg: pg,
        })
    }

    /// A single integer from `sql`, read straight from this database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let (url, sql) = (&self.url, sqlx::AssertSqlSafe(sql.to_owned()));
        if self.backend == Backend::Sqlite {
            let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await;
            pool.close().await;
            n.expect("scalar")
        } else {
            let pool = sqlx::PgPool::connect(url).await.expect("pg");
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await;
            pool.close().await;
            n.expect("scalar")
        }
    }

    /// The first column of every row of `sql`, as bytes, read straight from this database.
    pub async fn rows_of_bytes(&self, sql: &str) -> Vec<Vec<u8>> {
        let (url, sql) = (&self.url, sqlx::AssertSqlSafe(sql.to_owned()));
        if self.backend == Backend::Sqlite {
            let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await;
            pool.close().await;
            rows.expect("rows")
        } else {
            let pool = sqlx::PgPool::connect(url).await.expect("pg");
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await;
            pool.close().await;
            rows.expect("rows")
        }
    }
}

/// Declares a test body `async fn name(backend: Backend)` once and runs it on both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::$name($crate::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::$name($crate::Backend::Postgres).await }
            )*
        }
    };
}
