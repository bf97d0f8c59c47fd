//! How many runs the server carries out at once: at most `max_runs`, with at most
//! `max_waiting` more waiting for a slot; past that a call is refused as busy, so one
//! client cannot take the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The default number of runs at once: twice the cores.
pub fn default_max_runs() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default number of calls waiting for a slot: four per slot.
pub fn default_max_waiting(max_runs: usize) -> usize {
    4 * max_runs
}

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_runs: usize,
    max_waiting: usize,
    waiting: AtomicUsize,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error(
        "busy: {running} runs are running and {waiting} waiting (the server's limit); try again shortly"
    )]
    Busy { running: usize, waiting: usize },
    #[error("cancelled while waiting for a free run slot")]
    Cancelled,
}

/// Decrements the waiting count when the wait ends, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max_runs: usize, max_waiting: usize) -> Self {
        let max_runs = max_runs.max(1);
        Admission {
            slots: Arc::new(Semaphore::new(max_runs)),
            max_runs,
            max_waiting,
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn max_runs(&self) -> usize {
        self.max_runs
    }

    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// A slot for one run, held until the permit is dropped. Waits in line (first
    /// come, first served) while the queue has room; gives up when `cancel` fires.
    pub async fn admit(
        &self,
        cancel: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, NotAdmitted> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Take a place in the queue only if there is one.
        let taken = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_waiting).then_some(w + 1)
            });
        let Ok(before) = taken else {
            return Err(NotAdmitted::Busy {
                running: self.max_runs - self.slots.available_permits(),
                waiting: self.waiting.load(Ordering::SeqCst),
            });
        };
        let _place = Waiting(&self.waiting);
        tracing::debug!(waiting = before + 1, "a run waits for a free slot");
        tokio::select! {
            p = self.slots.clone().acquire_owned() => p.map_err(|_| NotAdmitted::Cancelled),
            _ = cancel.cancelled() => Err(NotAdmitted::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn queue_is_bounded_and_waiting_respects_cancellation() {
        let a = Arc::new(Admission::new(1, 1));
        let never = CancellationToken::new();
        let first = a.admit(&never).await.expect("first slot");
        // The second waits in the queue.
        let a2 = a.clone();
        let waiter = tokio::spawn(async move {
            let c = CancellationToken::new();
            a2.admit(&c).await.map(|_| ())
        });
        while a.waiting.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The third finds the queue full.
        let busy = a.admit(&never).await.expect_err("busy");
        assert_eq!(
            busy,
            NotAdmitted::Busy {
                running: 1,
                waiting: 1
            }
        );
        assert!(
            busy.to_string()
                .starts_with("busy: 1 runs are running and 1 waiting")
        );
        drop(first);
        waiter
            .await
            .expect("join")
            .expect("admitted once the slot was free");
        assert_eq!(a.waiting.load(Ordering::SeqCst), 0);

        // A cancelled waiter leaves the queue.
        let held = a.admit(&never).await.expect("slot");
        let c = CancellationToken::new();
        let a3 = a.clone();
        let c3 = c.clone();
        let w = tokio::spawn(async move { a3.admit(&c3).await.map(|_| ()) });
        while a.waiting.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.cancel();
        assert_eq!(w.await.expect("join"), Err(NotAdmitted::Cancelled));
        assert_eq!(a.waiting.load(Ordering::SeqCst), 0);
        drop(held);
        assert!(a.admit(&never).await.is_ok());
    }

    #[tokio::test]
    async fn zero_queue_refuses_at_once() {
        let a = Admission::new(1, 0);
        let never = CancellationToken::new();
        let _p = a.admit(&never).await.expect("slot");
        assert!(matches!(
            a.admit(&never).await,
            Err(NotAdmitted::Busy { .. })
        ));
    }
}
