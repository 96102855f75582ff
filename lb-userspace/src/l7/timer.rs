//! The request-head timer hyper needs for `header_timeout`, made cheap. hyper asks for a new
//! sleep for every request head; a tokio timer per request cost about 8% of the proxy's
//! throughput. Here each connection owns one tokio sleep, and every request's deadline is a
//! handle on it. Deadlines only move forward on a connection, so the shared sleep is re-armed
//! only when it fires (at most once per `header_timeout`), never per request.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::rt::{Sleep, Timer};

/// One connection's timer.
#[derive(Clone)]
pub struct ConnectionTimer {
    shared: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnectionTimer {
    pub fn new() -> ConnectionTimer {
        // Disarmed until the first deadline: far in the future.
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        ConnectionTimer {
            shared: Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(far)))),
        }
    }
}

impl Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(Deadline {
            deadline,
            shared: self.shared.clone(),
        })
    }
}

/// One deadline on the connection's shared sleep.
struct Deadline {
    deadline: Instant,
    shared: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let ours = tokio::time::Instant::from_std(self.deadline);
        let mut sleep = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        // Armed later than we need (the first deadline), or fired for an earlier one: re-arm.
        if sleep.deadline() > ours || sleep.is_elapsed() {
            sleep.as_mut().reset(ours);
        }
        // Registers this task's waker; the sleep fires at or before our deadline.
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) if Instant::now() >= self.deadline => Poll::Ready(()),
            Poll::Ready(()) => {
                sleep.as_mut().reset(ours);
                let _ = sleep.as_mut().poll(cx);
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Sleep for Deadline {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_deadline_fires_at_its_time_on_one_shared_sleep() {
        let ms = Duration::from_millis;
        let timer = ConnectionTimer::new();
        let start = Instant::now();
        timer.sleep(ms(100)).await;
        assert!(start.elapsed() >= ms(100));
        // A later deadline after an earlier one fired.
        let start = Instant::now();
        timer.sleep(ms(30)).await;
        assert!(start.elapsed() >= ms(30));
        // A deadline dropped before it fired leaves the next one on time.
        drop(timer.sleep(ms(10)));
        let start = Instant::now();
        timer.sleep(ms(50)).await;
        let waited = start.elapsed();
        assert!(waited >= ms(50) && waited < ms(500), "{waited:?}");
    }
}
