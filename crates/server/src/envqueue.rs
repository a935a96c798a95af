//! Per-stack group commit for env writes.
//!
//! Every env write to a stack goes through that stack's queue in this process. One drainer
//! task per busy stack takes everything waiting (in arrival order) and applies it as one batch:
//! one transaction, one row lock, one commit (one fsync / WAL flush) for many PATCHes, each
//! still checked on its own and given its own version and audit row (`Store::apply_env_writes`).
//! Callers get their own result only after the batch committed, so a 200 still means durable.
//!
//! Why: with one transaction per PATCH every writer queues on the same row lock and pays its
//! own commit; batching turns N lock rounds and N flushes into one (see `docs/decisions.md`).
//! The row lock and the in-transaction `deleting` check stay, so several server processes on
//! one database remain correct; they just batch independently.
//!
//! The queue is FIFO, so no writer starves, and the drainer is a spawned task, so a client that
//! disconnects mid-request cannot strand the writes queued behind it.
//!
//! Every write's wait is bounded from its arrival (`--lock-timeout`), the time it spends queued
//! behind other batches included: a batch waits for the lock only until its most impatient
//! write's deadline, a write whose deadline passed while queued is answered with the retryable
//! lock timeout at once, and when a batch times out, its writes with time left go back to the
//! front of the queue for another try.

use stackyard_core::model::{EnvOutcome, StackId};
use stackyard_core::store::{EnvBatchError, EnvStore, EnvWrite, EnvWriteError, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most writes applied in one transaction; more wait for the next batch.
const MAX_BATCH: usize = 512;

pub type WriteResult = Result<Result<EnvOutcome, EnvWriteError>, EnvBatchError>;

struct Pending {
    write: EnvWrite,
    reply: oneshot::Sender<WriteResult>,
}

/// The writes waiting for one stack. Present in the map exactly while a drainer runs for it.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
}

pub struct EnvQueue<S: EnvStore> {
    store: S,
    /// How long a write may wait in all, queued or for the lock.
    lock_timeout: Duration,
    /// A std mutex: held only to push or take a vector, never across an await.
    queues: Arc<Mutex<HashMap<StackId, Queue>>>,
}

impl<S: EnvStore> EnvQueue<S> {
    pub fn new(store: S, lock_timeout: Duration) -> Self {
        Self {
            store,
            lock_timeout,
            queues: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Queues `write` for `stack` and waits for its committed result.
    pub async fn submit(&self, stack: StackId, mut write: EnvWrite) -> WriteResult {
        write
            .deadline
            .get_or_insert_with(|| Instant::now() + self.lock_timeout);
        let (reply, rx) = oneshot::channel();
        let start_drainer = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = !queues.contains_key(&stack);
            queues
                .entry(stack)
                .or_default()
                .pending
                .push(Pending { write, reply });
            fresh
        };
        if start_drainer {
            let (store, queues) = (self.store.clone(), self.queues.clone());
            tokio::spawn(drain(store, queues, stack));
        }
        rx.await.unwrap_or_else(|_| {
            Err(EnvBatchError::Store(
                stackyard_core::store::StoreError::Unavailable("the env writer stopped".into()),
            ))
        })
    }
}

fn lock_timeout() -> EnvBatchError {
    EnvBatchError::Store(StoreError::LockTimeout)
}

async fn drain<S: EnvStore>(store: S, queues: Arc<Mutex<HashMap<StackId, Queue>>>, stack: StackId) {
    // If the store call panics, the guard drops the queue entry (and with it the waiters'
    // reply senders, so they get an error) instead of leaving an entry no drainer serves.
    struct Guard<'a>(&'a Mutex<HashMap<StackId, Queue>>, StackId, bool);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if !self.2 {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.1);
            }
        }
    }
    let mut guard = Guard(&queues, stack, false);
    loop {
        let batch: Vec<Pending> = {
            let mut map = queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(q) = map.get_mut(&stack) else {
                guard.2 = true;
                return;
            };
            if q.pending.is_empty() {
                map.remove(&stack);
                guard.2 = true;
                return;
            }
            let n = q.pending.len().min(MAX_BATCH);
            q.pending.drain(..n).collect()
        };
        // Writes that ran out of time while queued get the answer a lock wait that long gets.
        let now = Instant::now();
        let (expired, batch): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|p| p.write.deadline.is_some_and(|d| d <= now));
        for p in expired {
            let _ = p.reply.send(Err(lock_timeout()));
        }
        if batch.is_empty() {
            continue;
        }
        let size = batch.len();
        let (writes, replies): (Vec<EnvWrite>, Vec<oneshot::Sender<WriteResult>>) =
            batch.into_iter().map(|p| (p.write, p.reply)).unzip();
        let applied = store.apply_env_writes(stack, &writes).await;
        let elapsed = now.elapsed();
        metrics::histogram!("stackyard_env_batch_size").record(size as f64);
        metrics::histogram!("stackyard_env_batch_seconds").record(elapsed.as_secs_f64());
        tracing::debug!(
            stack = stack.0,
            size,
            elapsed_us = elapsed.as_micros() as u64,
            "env batch applied"
        );
        match applied {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // The batch waited until its most impatient write's deadline: the others still
            // have time, and go back to the front of the queue, in order, for another try.
            Err(EnvBatchError::Store(StoreError::LockTimeout)) => {
                let retry: Vec<Pending> = writes
                    .into_iter()
                    .zip(replies)
                    .map(|(write, reply)| Pending { write, reply })
                    .collect();
                let mut map = queues.lock().unwrap_or_else(|p| p.into_inner());
                let q = map.entry(stack).or_default();
                q.pending.splice(0..0, retry);
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
