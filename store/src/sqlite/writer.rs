//! The one connection that writes, owned by a thread of its own.
//!
//! Callers queue jobs and await their answers; the thread takes every job queued meanwhile at
//! once. State writes queued together commit in one transaction (group commit): a commit is
//! most of a small write's cost, so many callers share one. Each caller is answered only after
//! the commit that holds its write returned. Other writes run one by one, each as it always
//! did, between batches, in the order they were queued.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{backend, count, is_busy, locked, micros};
use crate::{QueuedWrite, Result, StateUsage, StoreError, WriteChain, Written};

/// State writes in one transaction at most: the write lock is held while a batch runs, and a
/// writer in another process waits that long.
const MAX_BATCH: usize = 256;

/// A state write waiting for its batch.
pub(super) struct StateJob {
    pub queued: QueuedWrite,
    pub reply: oneshot::Sender<Result<Written>>,
}

impl StateJob {
    /// Its answer: a refused or failed write breaks its chain, then the hook runs, then the
    /// caller hears.
    fn answer(self, answer: Result<Written>) {
        if answer.is_err()
            && let Some(chain) = &self.queued.chain
        {
            chain.break_off();
        }
        if let Some(hook) = self.queued.on_commit {
            guarded(|| hook(&answer));
        }
        let _ = self.reply.send(answer);
    }
}

enum Job {
    /// State writes queued together, in order.
    States(Vec<StateJob>),
    /// Anything else, run alone; it answers its caller itself.
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

pub(super) struct Writer {
    /// `None` only while dropping: closing the queue lets the thread finish.
    jobs: Option<mpsc::Sender<Job>>,
    /// State writes queued but not yet handed to the thread (see `flush_states`).
    states: Mutex<Vec<StateJob>>,
    thread: Option<JoinHandle<()>>,
}

pub(super) fn stopped() -> StoreError {
    StoreError::Backend("the database writer failed or stopped before answering".into())
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub fn start(conn: Connection) -> Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(conn, rx))
            .map_err(backend)?;
        Ok(Writer {
            jobs: Some(tx),
            states: Mutex::default(),
            thread: Some(thread),
        })
    }

    /// Hands `job` to the thread; gives it back if the thread is gone.
    fn queue(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(q) => q.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Runs `f` on the write connection, after the jobs queued before it.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Run(Box::new(move |c| {
            let _ = reply.send(f(c));
        })))
        .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues a state write for the next `flush_states`; it answers once its batch committed.
    pub fn queue_state(&self, w: QueuedWrite) -> oneshot::Receiver<Result<Written>> {
        let (reply, answer) = oneshot::channel();
        let job = StateJob { queued: w, reply };
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job);
        answer
    }

    /// Hands the state writes queued so far to the thread, as one job: the thread is woken once
    /// for them, and they commit together (a thread woken for each would commit them one by one
    /// on a busy CPU).
    pub fn flush_states(&self) {
        let states =
            std::mem::take(&mut *self.states.lock().unwrap_or_else(PoisonError::into_inner));
        if states.is_empty() {
            return;
        }
        if let Some(Job::States(states)) = self.queue(Job::States(states)).err() {
            for job in states {
                job.answer(Err(stopped()));
            }
        }
    }
}

impl Drop for Writer {
    /// Lets the thread finish the queued jobs and close the connection, so that the file is
    /// released once the store is gone.
    fn drop(&mut self) {
        self.flush_states();
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: every job queued while it worked is taken at once, consecutive state
/// writes as one batch.
fn serve(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::States(writes) => {
                    for w in writes {
                        batch.push(w);
                        if batch.len() == MAX_BATCH {
                            commit(&mut conn, &mut batch);
                        }
                    }
                }
                Job::Run(f) => {
                    // Queued after the batch's writes: they go first.
                    commit(&mut conn, &mut batch);
                    guarded(|| f(&mut conn));
                }
            }
            next = jobs.try_recv().ok();
        }
        commit(&mut conn, &mut batch);
    }
}

/// Runs `f`, surviving its panic: its callers' reply channels are dropped with it, so they get
/// a `Backend` error and the store goes on (an open transaction rolls back as it unwinds).
fn guarded(f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("a database write panicked; its callers get an error");
    }
}

/// Writes `batch` in one transaction and answers each caller. A write that is refused
/// (`Invalid`, `QuotaExceeded`) changes nothing and is answered alone; a failure of the
/// database rolls the whole batch back and fails every caller in it.
fn commit(conn: &mut Connection, batch: &mut Vec<StateJob>) {
    if batch.is_empty() {
        return;
    }
    let jobs = std::mem::take(batch);
    guarded(|| match write_all(conn, &jobs) {
        Ok(answers) => {
            for (job, answer) in jobs.into_iter().zip(answers) {
                job.answer(answer);
            }
        }
        Err(e) => {
            tracing::error!("a batch of {} state writes failed: {e}", jobs.len());
            let message = e.to_string();
            for job in jobs {
                let failed = if is_busy(&e) {
                    locked(&e)
                } else {
                    StoreError::Backend(message.clone().into())
                };
                job.answer(Err(failed));
            }
        }
    });
}

fn write_all(conn: &mut Connection, jobs: &[StateJob]) -> rusqlite::Result<Vec<Result<Written>>> {
    // IMMEDIATE takes the write lock before anything is read: a writer in another process
    // waits until this batch has committed.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut batch = Batch::default();
    let answers = jobs
        .iter()
        .map(|j| {
            let answer = batch.decide(&tx, j)?;
            if answer.is_err()
                && let Some(chain) = &j.queued.chain
            {
                // The chain's later writes in this batch must see it broken.
                chain.break_off();
            }
            Ok(answer)
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    batch.write(&tx)?;
    tx.commit()?;
    Ok(answers)
}

/// (owner, function, key)
type Key<'j> = (&'j str, &'j str, &'j str);

/// A batch's view of the state: each key's value and each owner's usage as the batch's earlier
/// writes left them, read once. Values reach the table when the batch ends, once per key, so a
/// key written many times in one batch (a busy counter) costs one statement, not three a write.
#[derive(Default)]
struct Batch<'j> {
    values: HashMap<Key<'j>, Option<String>>,
    /// Keys written, in the order of their first write.
    written: Vec<Key<'j>>,
    usage: HashMap<&'j str, StateUsage>,
}

impl<'j> Batch<'j> {
    /// One write, on what the writes before it left. The outer error fails the batch; the
    /// inner one is this write's own answer.
    fn decide(
        &mut self,
        tx: &Transaction<'_>,
        job: &'j StateJob,
    ) -> rusqlite::Result<Result<Written>> {
        let j = &job.queued;
        if j.chain.as_ref().is_some_and(WriteChain::is_broken) {
            return Ok(Err(WriteChain::refused()));
        }
        let s = &j.scope;
        let key = (s.owner.as_str(), s.function.as_str(), j.key.as_str());
        let current = match self.values.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                tx.prepare_cached(
                    "SELECT value FROM state WHERE owner = ?1 AND function = ?2 AND key = ?3",
                )?
                .query_row(params![key.0, key.1, key.2], |r| r.get(0))
                .optional()?,
            ),
        };
        let decision = match j.write.apply(&j.key, current.as_deref()) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let Some(value) = decision.store else {
            return Ok(Ok(decision.written));
        };
        let used = match self.usage.entry(&s.owner) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                tx.prepare_cached("SELECT keys, bytes FROM state_usage WHERE owner = ?1")?
                    .query_row(params![s.owner], |r| {
                        Ok(StateUsage {
                            keys: count(r.get(0)?),
                            bytes: count(r.get(1)?),
                        })
                    })
                    .optional()?
                    .unwrap_or_default(),
            ),
        };
        let after = used.after_write(current.as_ref().map(|v| v.len() as u64), value.len() as u64);
        if let Err(q) = j.quota.check(&s.owner, *used, after) {
            return Ok(Err(q.into()));
        }
        *used = after;
        if !self.written.contains(&key) {
            self.written.push(key);
        }
        *current = Some(value);
        Ok(Ok(decision.written))
    }

    /// Writes each written key's last value (the triggers keep the usage as decided).
    fn write(self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let now = micros(Timestamp::now());
        let mut upsert = tx.prepare_cached(
            "INSERT INTO state (owner, function, key, value, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (owner, function, key) DO UPDATE SET value = excluded.value,
             updated_at = excluded.updated_at",
        )?;
        for key in &self.written {
            let value = self.values.get(key).and_then(Option::as_deref);
            upsert.execute(params![key.0, key.1, key.2, value, now])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{SqliteStore, StateQuota, StateScope, StateWrite};

    fn job(
        key: &str,
        write: StateWrite,
        max_keys: u64,
    ) -> (StateJob, oneshot::Receiver<Result<Written>>) {
        let (reply, answer) = oneshot::channel();
        let queued = QueuedWrite {
            scope: StateScope {
                owner: "alice".into(),
                function: "f".into(),
            },
            key: key.into(),
            write,
            quota: StateQuota {
                max_keys,
                max_bytes: 1 << 20,
            },
            chain: None,
            on_commit: None,
        };
        let job = StateJob { queued, reply };
        (job, answer)
    }

    fn set(v: &str) -> StateWrite {
        StateWrite::Set { value: v.into() }
    }

    fn incr() -> StateWrite {
        StateWrite::Incr {
            by: 1.into(),
            default: 0.into(),
        }
    }

    /// Commits `writes` as one batch on a fresh database; each write's answer, and the
    /// connection to look at what was stored.
    fn batch(
        conn: Option<Connection>,
        writes: Vec<(&str, StateWrite, u64)>,
    ) -> (Vec<Result<Written>>, Connection) {
        let mut conn = conn.unwrap_or_else(|| {
            SqliteStore::init(Connection::open_in_memory().unwrap())
                .unwrap()
                .0
        });
        let (mut jobs, answers): (Vec<_>, Vec<_>) =
            writes.into_iter().map(|(k, w, q)| job(k, w, q)).unzip();
        commit(&mut conn, &mut jobs);
        assert!(jobs.is_empty());
        let answers = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap())
            .collect();
        (answers, conn)
    }

    fn stored(conn: &Connection, key: &str) -> Option<String> {
        conn.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .unwrap()
    }

    #[test]
    fn each_write_of_a_batch_sees_the_writes_before_it() {
        let (answers, conn) = batch(
            None,
            vec![("n", set("5"), 10), ("n", incr(), 10), ("n", incr(), 10)],
        );
        let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            answers,
            [
                Written::Stored,
                Written::Counted("6".into()),
                Written::Counted("7".into())
            ]
        );
        assert_eq!(stored(&conn, "n").as_deref(), Some("7"));
    }

    #[test]
    fn a_refused_write_changes_nothing_and_its_neighbours_land() {
        let (answers, conn) = batch(
            None,
            vec![
                ("s", set(r#""text""#), 10),
                ("s", incr(), 10),
                ("t", set("1"), 10),
            ],
        );
        assert!(matches!(answers[0], Ok(Written::Stored)));
        assert!(matches!(answers[1], Err(StoreError::Invalid(_))));
        assert!(matches!(answers[2], Ok(Written::Stored)));
        assert_eq!(stored(&conn, "s").as_deref(), Some(r#""text""#));
        assert_eq!(stored(&conn, "t").as_deref(), Some("1"));
    }

    #[test]
    fn the_quota_counts_the_keys_written_earlier_in_the_batch() {
        let (answers, conn) = batch(
            None,
            vec![
                ("a", set("1"), 2),
                ("b", set("1"), 2),
                ("c", set("1"), 2),
                ("a", set("2"), 2),
            ],
        );
        assert!(answers[0].is_ok() && answers[1].is_ok() && answers[3].is_ok());
        assert!(
            matches!(&answers[2], Err(StoreError::QuotaExceeded(q)) if q.used == 2 && q.after == 3)
        );
        assert_eq!(stored(&conn, "c"), None);
        assert_eq!(stored(&conn, "a").as_deref(), Some("2"));
    }

    #[test]
    fn a_chain_stops_at_its_first_refused_write_and_other_writes_go_on() {
        let chain = WriteChain::default();
        let (_, mut conn) = batch(None, vec![]);
        let (mut jobs, answers): (Vec<_>, Vec<_>) = [
            ("s", set(r#""text""#), Some(chain.clone())),
            ("s", incr(), Some(chain.clone())),
            ("t", set("1"), Some(chain.clone())),
            ("u", set("1"), None),
        ]
        .into_iter()
        .map(|(k, w, c)| {
            let (mut j, a) = job(k, w, 10);
            j.queued.chain = c;
            (j, a)
        })
        .unzip();
        commit(&mut conn, &mut jobs);
        let answers: Vec<_> = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap())
            .collect();
        assert!(matches!(answers[0], Ok(Written::Stored)));
        assert!(matches!(answers[1], Err(StoreError::Invalid(_))));
        assert!(matches!(answers[2], Err(StoreError::Aborted(_))));
        assert!(matches!(answers[3], Ok(Written::Stored)));
        assert!(chain.is_broken());
        assert_eq!(stored(&conn, "t"), None);
        assert_eq!(stored(&conn, "u").as_deref(), Some("1"));
    }

    #[test]
    fn hooks_run_in_commit_order_before_each_caller_hears() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (_, mut conn) = batch(None, vec![]);
        let (mut jobs, mut answers): (Vec<_>, Vec<_>) = ["a", "b", "c"]
            .into_iter()
            .map(|k| {
                let (mut j, a) = job(k, set("1"), 10);
                let seen = seen.clone();
                j.queued.on_commit = Some(Box::new(move |r: &Result<Written>| {
                    seen.lock().unwrap().push((k, r.is_ok()));
                }));
                (j, a)
            })
            .unzip();
        commit(&mut conn, &mut jobs);
        assert_eq!(
            *seen.lock().unwrap(),
            [("a", true), ("b", true), ("c", true)]
        );
        assert!(answers.iter_mut().all(|a| a.try_recv().is_ok()));
    }

    #[test]
    fn a_database_failure_fails_the_whole_batch_and_rolls_it_back() {
        let (_, conn) = batch(None, vec![]);
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON state WHEN NEW.key = 'boom'
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .unwrap();
        let (answers, conn) = batch(
            Some(conn),
            vec![("a", set("1"), 10), ("boom", set("1"), 10)],
        );
        for a in &answers {
            assert!(
                matches!(a, Err(StoreError::Backend(m)) if m.to_string().contains("the disk is full")),
                "{a:?}"
            );
        }
        assert_eq!(stored(&conn, "a"), None);
    }
}
