//! Watches: who is told when a node changes.
//!
//! Watches belong to connections, not sessions (a client re-registers them
//! with setWatches after reconnecting). Two tables, as in ZooKeeper: *data*
//! watches (set by exists and getData) and *child* watches (getChildren).
//! A watch is standard (one-shot), persistent, or persistent-recursive;
//! addWatch puts a persistent watch in both tables.
//!
//! Delivery rules (`WatchManager.triggerWatch` in ZooKeeper):
//! - standard and persistent watches fire for their exact path; standard
//!   ones are then removed;
//! - recursive watches fire for their path and every path below it, except
//!   for NodeChildrenChanged (a recursive watcher learns of a new child from
//!   the child's own NodeCreated);
//! - one change tells each connection at most once, even when it watches the
//!   node in both tables (a deleted node with data and child watches gives one
//!   NodeDeleted);
//! - an event reaches a connection only when the connection's ids may READ
//!   the node the event names, checked at delivery with the ids the
//!   connection holds then (a one-shot watch that fails the check is still
//!   used up). Without this, a recursive watch above a protected subtree
//!   would tell anyone the names and the changes of nodes they are refused
//!   (CVE-2024-23944; patched ZooKeeper 3.8 checks the same way).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use zk_wire::consts::{perms, EventType, KeeperState, WatcherType};
use zk_wire::records::{Acl, Id, WatcherEvent};

use crate::conn_id::ConnId;
use crate::tree::Trigger;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standard,
    Persistent,
    PersistentRecursive,
}

/// One kind of watch (data or child), indexed both ways. A watched path
/// is stored once, as an `Arc<str>` that both indexes share: a million
/// watches over ten thousand sessions would otherwise hold a million
/// copies of their paths, most of a watch's cost.
#[derive(Debug, Default)]
struct Table {
    by_path: HashMap<Arc<str>, HashMap<ConnId, Mode>>,
    by_conn: HashMap<ConnId, HashSet<Arc<str>>>,
    recursive: usize,
}

impl Table {
    fn add(&mut self, path: &str, conn: ConnId, mode: Mode) {
        let key: Arc<str> = match self.by_path.get_key_value(path) {
            Some((k, _)) => k.clone(),
            None => Arc::from(path),
        };
        let prev = self.by_path.entry(key.clone()).or_default().insert(conn, mode);
        if prev == Some(Mode::PersistentRecursive) {
            self.recursive -= 1;
        }
        if mode == Mode::PersistentRecursive {
            self.recursive += 1;
        }
        self.by_conn.entry(conn).or_default().insert(key);
    }

    fn contains(&self, path: &str, conn: ConnId) -> bool {
        self.by_path.get(path).is_some_and(|m| m.contains_key(&conn))
    }

    fn remove(&mut self, path: &str, conn: ConnId) -> bool {
        let Some(watchers) = self.by_path.get_mut(path) else {
            return false;
        };
        let Some(mode) = watchers.remove(&conn) else {
            return false;
        };
        if mode == Mode::PersistentRecursive {
            self.recursive -= 1;
        }
        if watchers.is_empty() {
            self.by_path.remove(path);
        }
        if let Some(paths) = self.by_conn.get_mut(&conn) {
            paths.remove(path);
            if paths.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        true
    }

    fn remove_conn(&mut self, conn: ConnId) {
        for path in self.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(watchers) = self.by_path.get_mut(&path) {
                if watchers.remove(&conn) == Some(Mode::PersistentRecursive) {
                    self.recursive -= 1;
                }
                if watchers.is_empty() {
                    self.by_path.remove(&path);
                }
            }
        }
    }

    /// Collects (and consumes, for one-shot watches) the watchers of a change
    /// to `path`, skipping those in `suppress`.
    fn trigger(&mut self, path: &str, event: EventType, suppress: &HashSet<ConnId>, out: &mut HashSet<ConnId>) {
        // The exact path: every mode (recursive ones not for child events).
        let mut emptied = false;
        if let Some(watchers) = self.by_path.get_mut(path) {
            let mut fired_once = Vec::new();
            for (&conn, &mode) in watchers.iter() {
                if mode == Mode::PersistentRecursive && event == EventType::NodeChildrenChanged {
                    continue;
                }
                if !suppress.contains(&conn) {
                    out.insert(conn);
                }
                if mode == Mode::Standard {
                    fired_once.push(conn);
                }
            }
            for conn in fired_once {
                watchers.remove(&conn);
                if let Some(paths) = self.by_conn.get_mut(&conn) {
                    paths.remove(path);
                    if paths.is_empty() {
                        self.by_conn.remove(&conn);
                    }
                }
            }
            emptied = watchers.is_empty();
        }
        if emptied {
            self.by_path.remove(path);
        }
        // Ancestors: recursive watches only. Skipped entirely while nobody
        // holds a recursive watch, which keeps the common case to one lookup.
        if self.recursive == 0 || event == EventType::NodeChildrenChanged {
            return;
        }
        let mut p = path;
        while p != "/" {
            p = match p.rfind('/') {
                Some(0) => "/",
                Some(i) => &p[..i],
                None => return,
            };
            if let Some(watchers) = self.by_path.get(p) {
                for (&conn, &mode) in watchers {
                    if mode == Mode::PersistentRecursive && !suppress.contains(&conn) {
                        out.insert(conn);
                    }
                }
            }
        }
    }

    fn count(&self) -> usize {
        self.by_path.values().map(HashMap::len).sum()
    }
}

#[derive(Debug, Default)]
pub struct WatchManager {
    data: Table,
    child: Table,
    /// Each connection's ids (ip, digests, super), as of its last addauth.
    /// A connection not listed holds no id: only world-readable nodes.
    auth: HashMap<ConnId, Vec<Id>>,
}

/// A notification for one connection.
pub type Notification = (ConnId, WatcherEvent);

fn event(kind: EventType, path: &str) -> WatcherEvent {
    WatcherEvent { event_type: kind.as_i32(), state: KeeperState::SyncConnected.as_i32(), path: path.to_string() }
}

impl WatchManager {
    pub fn add_data(&mut self, path: &str, conn: ConnId) {
        self.data.add(path, conn, Mode::Standard);
    }

    pub fn add_child(&mut self, path: &str, conn: ConnId) {
        self.child.add(path, conn, Mode::Standard);
    }

    /// addWatch: a persistent watch lives in both tables.
    pub fn add_persistent(&mut self, path: &str, conn: ConnId, recursive: bool) {
        let mode = if recursive { Mode::PersistentRecursive } else { Mode::Persistent };
        self.data.add(path, conn, mode);
        self.child.add(path, conn, mode);
    }

    pub fn contains(&self, path: &str, kind: WatcherType, conn: ConnId) -> bool {
        match kind {
            WatcherType::Children => self.child.contains(path, conn),
            WatcherType::Data => self.data.contains(path, conn),
            WatcherType::Any => self.child.contains(path, conn) || self.data.contains(path, conn),
        }
    }

    pub fn remove(&mut self, path: &str, kind: WatcherType, conn: ConnId) -> bool {
        match kind {
            WatcherType::Children => self.child.remove(path, conn),
            WatcherType::Data => self.data.remove(path, conn),
            WatcherType::Any => {
                let a = self.child.remove(path, conn);
                let b = self.data.remove(path, conn);
                a || b
            }
        }
    }

    /// Forgets a closed connection's watches.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.data.remove_conn(conn);
        self.child.remove_conn(conn);
        self.auth.remove(&conn);
    }

    /// Records the ids a connection holds (at the handshake and after each
    /// addauth); events are filtered against them.
    pub fn set_auth(&mut self, conn: ConnId, ids: &[Id]) {
        self.auth.insert(conn, ids.to_vec());
    }

    fn may_read(&self, conn: ConnId, acl: &[Acl]) -> bool {
        let ids = self.auth.get(&conn).map_or(&[][..], Vec::as_slice);
        crate::acl::check(acl, perms::READ, ids).is_ok()
    }

    /// Turns the triggers of one transaction into notifications, in order.
    pub fn fire(&mut self, triggers: &[Trigger], out: &mut Vec<Notification>) {
        let none = HashSet::new();
        for t in triggers {
            let mut who = HashSet::new();
            let (kind, path, acl) = match t {
                Trigger::Created(p, acl) => {
                    self.data.trigger(p, EventType::NodeCreated, &none, &mut who);
                    (EventType::NodeCreated, p, acl)
                }
                Trigger::DataChanged(p, acl) => {
                    self.data.trigger(p, EventType::NodeDataChanged, &none, &mut who);
                    (EventType::NodeDataChanged, p, acl)
                }
                Trigger::Deleted(p, acl) => {
                    self.data.trigger(p, EventType::NodeDeleted, &none, &mut who);
                    let told = who.clone();
                    self.child.trigger(p, EventType::NodeDeleted, &told, &mut who);
                    (EventType::NodeDeleted, p, acl)
                }
                Trigger::ChildrenChanged(p, acl) => {
                    self.child.trigger(p, EventType::NodeChildrenChanged, &none, &mut who);
                    (EventType::NodeChildrenChanged, p, acl)
                }
            };
            who.retain(|&conn| self.may_read(conn, acl));
            if who.is_empty() {
                continue;
            }
            let ev = event(kind, path);
            let mut who: Vec<ConnId> = who.into_iter().collect();
            who.sort_unstable();
            out.extend(who.into_iter().map(|c| (c, ev.clone())));
        }
    }

    /// setWatches after a reconnect: re-arm each watch, or fire at once when
    /// the node changed since `relative_zxid` (the last zxid the client saw),
    /// so nothing that happened while it was away is missed.
    ///
    /// The events fired here are not checked against READ, unlike those of
    /// [`fire`](Self::fire): patched ZooKeeper 3.8 does not check them
    /// either, and a client must get from either server the same events
    /// after a reconnect. What they tell is bounded: only paths the client
    /// named itself, no data, and no more than `exists` (which checks no
    /// ACL) would show. A re-armed watch fires later through `fire`, checked.
    #[allow(clippy::too_many_arguments)]
    pub fn set_watches(
        &mut self,
        tree: &crate::tree::DataTree,
        conn: ConnId,
        relative_zxid: i64,
        data: &[String],
        exist: &[String],
        child: &[String],
        persistent: &[String],
        recursive: &[String],
        out: &mut Vec<WatcherEvent>,
    ) {
        for p in data {
            match tree.get(p) {
                None => out.push(event(EventType::NodeDeleted, p)),
                Some(n) if n.stat.mzxid > relative_zxid => out.push(event(EventType::NodeDataChanged, p)),
                Some(_) => self.data.add(p, conn, Mode::Standard),
            }
        }
        for p in exist {
            match tree.get(p) {
                Some(_) => out.push(event(EventType::NodeCreated, p)),
                None => self.data.add(p, conn, Mode::Standard),
            }
        }
        for p in child {
            match tree.get(p) {
                None => out.push(event(EventType::NodeDeleted, p)),
                Some(n) if n.stat.pzxid > relative_zxid => out.push(event(EventType::NodeChildrenChanged, p)),
                Some(_) => self.child.add(p, conn, Mode::Standard),
            }
        }
        for p in persistent {
            self.add_persistent(p, conn, false);
        }
        for p in recursive {
            self.add_persistent(p, conn, true);
        }
    }

    /// Total watches (as `mntr`'s watch_count counts them: entries in both tables).
    pub fn count(&self) -> usize {
        self.data.count() + self.child.count()
    }

    pub fn watched_paths(&self) -> usize {
        let mut paths: HashSet<&str> = self.data.by_path.keys().map(|p| &**p).collect();
        paths.extend(self.child.by_path.keys().map(|p| &**p));
        paths.len()
    }

    pub fn connections(&self) -> usize {
        let mut conns: HashSet<ConnId> = self.data.by_conn.keys().copied().collect();
        conns.extend(self.child.by_conn.keys().copied());
        conns.len()
    }

    /// Every armed watch as (path, connection, table, mode), table being
    /// "data" or "child" (the admin API's ListWatches).
    pub fn list(&self) -> Vec<(String, ConnId, &'static str, Mode)> {
        let mut out = Vec::with_capacity(self.count());
        for (table, name) in [(&self.data, "data"), (&self.child, "child")] {
            for (path, watchers) in &table.by_path {
                out.extend(watchers.iter().map(|(c, m)| (path.to_string(), *c, name, *m)));
            }
        }
        out.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        out
    }

    /// Paths each connection watches (`wchc`).
    pub fn by_connection(&self) -> HashMap<ConnId, Vec<String>> {
        let mut out: HashMap<ConnId, HashSet<String>> = HashMap::new();
        for t in [&self.data, &self.child] {
            for (c, paths) in &t.by_conn {
                out.entry(*c).or_default().extend(paths.iter().map(|p| p.to_string()));
            }
        }
        out.into_iter()
            .map(|(c, s)| {
                let mut v: Vec<String> = s.into_iter().collect();
                v.sort();
                (c, v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> std::sync::Arc<Vec<Acl>> {
        std::sync::Arc::new(crate::acl::open_acl_unsafe())
    }

    fn fire(w: &mut WatchManager, t: Trigger) -> Vec<(ConnId, i32, String)> {
        let mut out = Vec::new();
        w.fire(&[t], &mut out);
        out.into_iter().map(|(c, e)| (c, e.event_type, e.path)).collect()
    }

    #[test]
    fn standard_watches_fire_once() {
        let mut w = WatchManager::default();
        w.add_data("/a", 1);
        assert_eq!(fire(&mut w, Trigger::DataChanged("/a".into(), open())), vec![(1, 3, "/a".into())]);
        assert!(fire(&mut w, Trigger::DataChanged("/a".into(), open())).is_empty());
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn delete_tells_each_connection_once() {
        let mut w = WatchManager::default();
        w.add_data("/a", 1);
        w.add_child("/a", 1);
        w.add_child("/a", 2);
        assert_eq!(fire(&mut w, Trigger::Deleted("/a".into(), open())), vec![(1, 2, "/a".into()), (2, 2, "/a".into())]);
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn recursive_watches_see_descendants_but_not_child_events() {
        let mut w = WatchManager::default();
        w.add_persistent("/a", 1, true);
        assert_eq!(fire(&mut w, Trigger::Created("/a/b/c".into(), open())), vec![(1, 1, "/a/b/c".into())]);
        assert!(fire(&mut w, Trigger::ChildrenChanged("/a/b".into(), open())).is_empty());
        assert!(fire(&mut w, Trigger::ChildrenChanged("/a".into(), open())).is_empty());
        assert_eq!(fire(&mut w, Trigger::DataChanged("/a".into(), open())), vec![(1, 3, "/a".into())]);
        assert!(
            fire(&mut w, Trigger::Created("/ab".into(), open())).is_empty(),
            "a sibling with the same prefix is not below"
        );
        assert_eq!(w.count(), 2, "persistent watches stay");
    }

    #[test]
    fn events_go_only_to_connections_that_may_read_the_node() {
        let mut w = WatchManager::default();
        let alice = Id { scheme: "digest".into(), id: "alice:x".into() };
        let hers = std::sync::Arc::new(vec![Acl { perms: perms::ALL, id: alice.clone() }]);
        w.add_persistent("/", 1, true);
        w.add_persistent("/", 2, true);
        w.add_data("/s", 1);
        w.set_auth(2, &[alice]);
        let secret = |p: &str| Trigger::Created(p.into(), hers.clone());
        assert_eq!(fire(&mut w, secret("/s")), vec![(2, 1, "/s".into())]);
        assert_eq!(w.count(), 4, "the refused one-shot watch is used up all the same");
        assert_eq!(fire(&mut w, Trigger::Created("/p".into(), open())), vec![(1, 1, "/p".into()), (2, 1, "/p".into())]);
        w.set_auth(1, &[Id { scheme: "super".into(), id: String::new() }]);
        assert_eq!(fire(&mut w, secret("/t")), vec![(1, 1, "/t".into()), (2, 1, "/t".into())]);
    }

    #[test]
    fn persistent_watch_sees_child_events() {
        let mut w = WatchManager::default();
        w.add_persistent("/a", 1, false);
        assert_eq!(fire(&mut w, Trigger::ChildrenChanged("/a".into(), open())), vec![(1, 4, "/a".into())]);
        assert!(fire(&mut w, Trigger::Created("/a/b".into(), open())).is_empty());
        w.remove_conn(1);
        assert_eq!(w.count(), 0);
    }
}
