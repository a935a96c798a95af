//! `get_stack`'s answers, kept in memory until a write could change them.
//!
//! `GET /stacks/:slug` is what clients poll, and on SQLite even a one-statement read costs more
//! than the rest of the request: each statement is a round trip to the connection's worker
//! thread (`docs/performance.md`). This store is its file's only writer (`is_shared()` is
//! false), so it knows when the data can change: only inside one of its own write transactions,
//! all of which begin on the single writer connection (`SqliteStore::write_tx_until`).
//!
//! The rule that keeps a cached answer from ever being older than a committed write:
//! - a write empties the cache and marks itself open when its `BEGIN IMMEDIATE` succeeds, so
//!   nothing cached survives into a commit;
//! - while a write is open nothing is added, and a read adds its answer only if no write began
//!   or ended since the read started (the epoch); answers read during a write may already show
//!   it committed, or not — they are served but not kept;
//! - the write is marked closed (and the epoch moves again) only once the writer connection is
//!   back in the pool, after the commit or rollback, so the flag cannot clear early.
//!
//! Writes by another process are not seen; the store does not support them (admin commands
//! started beside a running server touch teams and tokens only, which are not cached here).

use stackyard_core::ids::StackSlug;
use stackyard_core::model::{Access, StackDetail};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct DetailCache {
    /// A std mutex: held only to look up, insert or clear, never across an await.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Moves whenever a write begins or ends.
    epoch: u64,
    writing: bool,
    answers: HashMap<StackSlug, StackDetail>,
}

/// Past this many stacks the cache starts over (it is only a shortcut).
const MAX_ANSWERS: usize = 100_000;

impl DetailCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for `slug`, if `access` may see it.
    pub(crate) fn get(&self, access: Access, slug: &StackSlug) -> Option<StackDetail> {
        let inner = self.lock();
        let d = inner.answers.get(slug)?;
        let visible = match access {
            Access::Anonymous => d.stack.team_id.is_none(),
            Access::Team(t) => d.stack.team_id == Some(t),
        };
        visible.then(|| d.clone())
    }

    /// Taken before a read; `None` while a write is open (its answer will not be kept).
    pub(crate) fn epoch(&self) -> Option<u64> {
        let inner = self.lock();
        (!inner.writing).then_some(inner.epoch)
    }

    /// Keeps `detail`, read from the database after `epoch`, if no write began or ended since.
    pub(crate) fn put(&self, epoch: u64, detail: &StackDetail) {
        let mut inner = self.lock();
        if inner.writing || inner.epoch != epoch {
            return;
        }
        if inner.answers.len() >= MAX_ANSWERS {
            inner.answers.clear();
        }
        inner
            .answers
            .insert(detail.stack.slug.clone(), detail.clone());
    }

    /// A write transaction began: nothing cached may outlive it.
    pub(crate) fn write_began(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.writing = true;
        inner.answers.clear();
    }

    /// The writer connection is back in the pool: the write committed or rolled back.
    pub(crate) fn write_ended(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.writing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackyard_core::model::*;
    use stackyard_core::time::Millis;

    fn detail(team: Option<i64>) -> StackDetail {
        StackDetail {
            stack: Stack {
                id: StackId(1),
                slug: StackSlug::parse("stk-0123456789abcdef01234567").unwrap(),
                name: "n".into(),
                environment: "development".into(),
                team_id: team.map(TeamId),
                tier: "team".into(),
                status: StackStatus::Healthy,
                error: None,
                env_version: 0,
                release: 1,
                op_generation: 1,
                created_at: Millis(0),
                updated_at: Millis(0),
                expires_at: None,
            },
            services: Vec::new(),
            release: None,
        }
    }

    #[test]
    fn an_answer_read_before_a_write_is_never_kept() {
        let cache = DetailCache::default();
        let d = detail(Some(7));
        let slug = d.stack.slug.clone();
        // Read started, then a write began (and maybe committed) before the answer came back.
        let e = cache.epoch().unwrap();
        cache.write_began();
        cache.put(e, &d);
        assert!(cache.get(Access::Team(TeamId(7)), &slug).is_none());
        // While the write is open, reads are not kept either.
        assert!(cache.epoch().is_none());
        cache.write_ended();
        cache.put(e, &d);
        assert!(cache.get(Access::Team(TeamId(7)), &slug).is_none());
        // A read that started after the write ended is kept, and only its owner sees it.
        let e = cache.epoch().unwrap();
        cache.put(e, &d);
        assert!(cache.get(Access::Team(TeamId(7)), &slug).is_some());
        assert!(cache.get(Access::Team(TeamId(8)), &slug).is_none());
        assert!(cache.get(Access::Anonymous, &slug).is_none());
        // The next write empties the cache as it begins.
        cache.write_began();
        assert!(cache.get(Access::Team(TeamId(7)), &slug).is_none());
    }
}
