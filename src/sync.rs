//! The crate's one policy for poisoned locks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Every lock in taskgate guards plain data (maps of counters, slots, timestamps) that a
/// panicking holder cannot leave half-written in a way that matters, so a poisoned lock is
/// used as it is rather than spreading the panic to every later request.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
