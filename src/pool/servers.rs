//! The server connections of one pool, as SHOW SERVERS lists them:
//! registered once when a connection is opened and removed when it is
//! closed, never touched per transaction (whether one is idle is read
//! from the pool's idle lists when listed).

use slab::Slab;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One open server connection.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Unique within its pool for the connection's life.
    pub id: usize,
    /// The backend's process id (`pg_backend_pid()` on the server).
    pub pid: i32,
    pub connect_time: SystemTime,
}

/// A pool's open connections.
#[derive(Debug, Default)]
pub struct ServerList {
    entries: Mutex<Slab<ServerInfo>>,
}

impl ServerList {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<ServerInfo>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a connection just opened; it stays listed while the
    /// returned registration lives (the connection holds it).
    pub fn register(self: &Arc<Self>, pid: i32) -> Registered {
        let mut entries = self.lock();
        let entry = entries.vacant_entry();
        let id = entry.key();
        entry.insert(ServerInfo {
            id,
            pid,
            connect_time: SystemTime::now(),
        });
        Registered {
            list: Arc::clone(self),
            id,
        }
    }

    /// Every open connection right now.
    pub fn list(&self) -> Vec<ServerInfo> {
        self.lock().iter().map(|(_, s)| s.clone()).collect()
    }
}

/// A connection's place in its pool's list; unlisted on drop.
#[derive(Debug)]
pub struct Registered {
    list: Arc<ServerList>,
    pub id: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.list.lock().try_remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_registered() {
        let list = Arc::new(ServerList::default());
        let a = list.register(11);
        let b = list.register(12);
        assert_eq!(list.list().len(), 2);
        drop(a);
        let left = list.list();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].id, left[0].pid), (b.id, 12));
    }
}
