//! The request workers: one thread per core, each running a single-threaded tokio runtime,
//! and the public listener's connections dealt out to them in turn.
//!
//! Why not tokio's multi-thread runtime: a pass-through is two tasks passing the turn back and
//! forth (the request's, and hyper-util's task for the upstream connection it borrowed), and
//! on a work-stealing scheduler each hand-off may cross to another thread (a wake-up of a
//! parked worker, a migration, cold caches). Here a connection, the requests on it, the
//! upstream connections they open and every task they spawn stay on one thread, as in nginx's
//! worker processes; nothing is shared but the cache, the limits and the metrics, which are
//! thread-safe anyway. The price is that one busy connection cannot borrow an idle core: a
//! client holding a single keep-alive connection is served by one core (BENCHMARKS.md).

use std::{
    cell::Cell,
    future::Future,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    thread,
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot, task::JoinHandle};

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker the calling thread is, if it is one.
pub fn current() -> Option<usize> {
    WORKER.get()
}

/// How many workers a start-up makes: one per core this process may use (cgroup quotas
/// included). Read once per process (it reads cgroup files), so that the workers and the
/// upstream clients made for them always agree.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Longest a stopping worker waits for its blocking tasks (a secret-file read) to end.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Running workers; dropping this stops them (what is still running on them is dropped).
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` (at least one) worker threads.
    pub fn start(n: usize) -> io::Result<Self> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            thread::Builder::new()
                .name(format!("taskgate-worker-{index}"))
                .spawn(move || {
                    WORKER.set(Some(index));
                    // Runs what is spawned on the handle until the stop (or its sender's drop).
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_timeout(STOP_WAIT);
                })?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// Runs `task` on the next worker in turn.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[turn].spawn(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_dealt_to_the_workers_in_turn_and_stay_on_their_thread() {
        let workers = Workers::start(3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (before, after) = workers
                .spawn(async {
                    let before = (current(), thread::current().id());
                    tokio::task::yield_now().await;
                    tokio::spawn(async { (current(), thread::current().id()) })
                        .await
                        .map(|after| (before, after))
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(before, after, "a spawned task stays on its worker");
            seen.push(before.0.expect("runs on a worker"));
        }
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        assert_eq!(current(), None, "the caller is not a worker");
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_threads_and_tasks() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        // Never finishes by itself; its sender is dropped when the runtime drops it.
        workers.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(workers);
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the task was dropped with its worker")
            .unwrap_err();
    }
}
