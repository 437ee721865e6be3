//! The open client connections, and which of them are waiting for a request head: over the
//! cap, a new connection replaces the one that has waited longest (a slowloris head or a
//! forgotten keep-alive connection) instead of being refused while that one sits there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// At most `max` connections; see [`Connections::open`].
pub(crate) struct Connections {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    /// Since when the connection waits for a request head; `None` while a request runs.
    waiting_since: Option<Instant>,
    /// Tells the connection's task to close it.
    close: Arc<Notify>,
}

impl Connections {
    pub(crate) fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            table: Mutex::new(Table::default()),
        })
    }

    /// Registers a new connection. At the cap, the connection that has waited longest for a
    /// request head is told to close and gives up its place at once; when every connection
    /// is in a request, `None`: the new one must be refused.
    pub(crate) fn open(self: &Arc<Self>, now: Instant) -> Option<Connection> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.open.len() >= self.max {
            let longest_waiting = table
                .open
                .iter()
                .filter_map(|(id, entry)| entry.waiting_since.map(|since| (since, *id)))
                .min()?
                .1;
            if let Some(evicted) = table.open.remove(&longest_waiting) {
                // Stored if the task is not waiting yet: it then sees it at its next check.
                evicted.close.notify_one();
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let close = Arc::new(Notify::new());
        table.open.insert(
            id,
            Entry {
                waiting_since: Some(now),
                close: Arc::clone(&close),
            },
        );
        Some(Connection {
            id,
            connections: Arc::clone(self),
            close,
        })
    }

    fn set_waiting(&self, id: u64, waiting_since: Option<Instant>) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table.open.get_mut(&id) {
            entry.waiting_since = waiting_since;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }
}

/// One registered connection; dropping it gives up its place.
pub(crate) struct Connection {
    id: u64,
    connections: Arc<Connections>,
    close: Arc<Notify>,
}

impl Connection {
    /// A request head has arrived: not to be replaced until its response is produced.
    pub(crate) fn request_started(&self) {
        self.connections.set_waiting(self.id, None);
    }

    /// The response is produced: the connection waits for the next head from `now`.
    pub(crate) fn request_finished(&self, now: Instant) {
        self.connections.set_waiting(self.id, Some(now));
    }

    /// Completes when a newer connection has replaced this one.
    pub(crate) async fn replaced(&self) {
        self.close.notified().await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut table = self
            .connections
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn over_the_cap_the_longest_waiting_connection_is_replaced() {
        let connections = Connections::new(3);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let first = connections.open(at(0)).unwrap();
        let second = connections.open(at(1)).unwrap();
        let third = connections.open(at(2)).unwrap();
        // The first is busy, so the second (waiting since 1 ms) goes.
        first.request_started();
        let fourth = connections.open(at(3)).unwrap();
        assert_eq!(connections.len(), 3);
        tokio::time::timeout(Duration::from_secs(5), second.replaced())
            .await
            .expect("the second was told to close");
        // Its task ends later; that must not remove anyone else.
        drop(second);
        assert_eq!(connections.len(), 3);
        // A finished request waits from its end: the third (2 ms) goes before the first (10 ms).
        first.request_finished(at(10));
        let _fifth = connections.open(at(11)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), third.replaced())
            .await
            .expect("the third was told to close");
        drop((first, third, fourth));
    }

    #[test]
    fn when_every_connection_is_in_a_request_a_new_one_is_refused() {
        let connections = Connections::new(2);
        let now = Instant::now();
        let a = connections.open(now).unwrap();
        let b = connections.open(now).unwrap();
        a.request_started();
        b.request_started();
        assert!(connections.open(now).is_none());
        drop(a);
        assert!(connections.open(now).is_some());
    }
}
