//! The admin API over gRPC (`coordinator.admin.v1.Admin`, defined and
//! generated in the `admin-api` crate; this module implements its server
//! trait).
//!
//! It reads the same internals the four-letter words read (`ServerStats`
//! renders the same [`crate::stats::Snapshot`] as `mntr` and `/metrics`),
//! typed for programs, and adds the drills that the text commands cannot
//! offer: expire a session, close it, drop its connection, take a snapshot.
//!
//! # Where it is served
//! On the admin listener (`--admin-listen`), on the same port as the HTTP
//! endpoints: gRPC calls are HTTP/2 requests to `/<service>/<method>`, a
//! path no HTTP endpoint uses, so one axum router holds both (see the
//! router in [`crate::admin`]) and one listener accepts HTTP/1 and HTTP/2
//! alike. One port means one flag, one firewall rule and one place to keep
//! off the public network; the listener is off unless asked for.
//!
//! # Drills are the real thing
//! `ExpireSession` calls the very function the expiry timer calls,
//! so a test that expires a session this way sees what a real expiry does:
//! ephemerals deleted in ZooKeeper's order, watches fired, the connection
//! closed, and "session expired" when the client reconnects.

use std::collections::HashMap;
use std::sync::Arc;

use admin_api as pb;
use pb::admin_server::AdminServer;
use pb::*;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::path;
use crate::session::SessionId;
use crate::stats::{self, SummaryStats};
use crate::watch::Mode;

/// ListTree's node limit when the request gives none.
const DEFAULT_TREE_LIMIT: usize = 10_000;

/// What the admin endpoints, HTTP and gRPC, act on: the server's core, and
/// the one duty that lives outside it. The admin listener and this service
/// reach the server only through it, never by naming the module that
/// started them.
#[derive(Clone)]
pub(crate) struct Handle {
    core: Arc<Core>,
}

impl Handle {
    pub(crate) fn new(core: Arc<Core>) -> Handle {
        Handle { core }
    }

    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// Writes a snapshot of the tree now; the zxid it covers, or `None`
    /// when the server keeps no data dir.
    pub(crate) async fn snapshot_now(&self) -> anyhow::Result<Option<i64>> {
        self.core.snapshot_now().await
    }
}

/// The Admin service and server reflection, as routes for the admin router.
pub(crate) fn routes(admin: Handle) -> axum::Router {
    let mut routes = tonic::service::Routes::new(AdminServer::new(AdminService { admin }));
    // Reflection lets grpcurl and grpcui discover the API without the proto
    // file. v1alpha too: many installed grpcurl versions still ask for it.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    match (reflection, reflection_alpha) {
        (Ok(v1), Ok(v1alpha)) => routes = routes.add_service(v1).add_service(v1alpha),
        // The descriptors are compiled in; this only fails if the build is
        // broken, and the API itself still works without reflection.
        (Err(e), _) | (_, Err(e)) => tracing::warn!("gRPC reflection is off: {e}"),
    }
    routes.into_axum_router()
}

struct AdminService {
    admin: Handle,
}

impl AdminService {
    fn core(&self) -> &Core {
        self.admin.core()
    }

    /// The session's ephemerals, or NOT_FOUND when no such session is open.
    fn open_session(&self, id: i64) -> Result<Vec<String>, Status> {
        let open = self.core().with_sessions(|s| s.get(id).is_some_and(|s| !s.closing));
        if !open {
            return Err(Status::not_found(format!("no open session {}", SessionId(id))));
        }
        Ok(self.core().with_tree(|t| t.ephemerals_of(id).cloned().collect()))
    }
}

fn stats_reply(s: &stats::Snapshot) -> ServerStatsReply {
    ServerStatsReply {
        version: s.version.to_string(),
        server_state: s.server_state.to_string(),
        avg_latency: s.latency.avg_ms,
        max_latency: s.latency.max_ms,
        min_latency: s.latency.min_ms,
        packets_received: s.packets_received,
        packets_sent: s.packets_sent,
        num_alive_connections: s.num_alive_connections,
        outstanding_requests: s.outstanding_requests,
        znode_count: s.znode_count,
        watch_count: s.watch_count,
        ephemerals_count: s.ephemerals_count,
        approximate_data_size: s.approximate_data_size,
        open_file_descriptor_count: s.open_file_descriptor_count,
        max_file_descriptor_count: s.max_file_descriptor_count.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        global_sessions: s.global_sessions,
        last_zxid: s.last_zxid,
        uptime: u64::try_from(s.uptime.as_millis()).unwrap_or(u64::MAX),
        read_latency: Some(summary(&s.read_latency)),
        update_latency: Some(summary(&s.update_latency)),
        fsync_time: Some(summary(&s.fsync_time)),
        snapshot_time: Some(summary(&s.snapshot_time)),
        queued_bytes: s.queued_bytes,
    }
}

fn summary(s: &SummaryStats) -> Summary {
    Summary {
        count: s.count,
        sum_ms: s.sum_ms,
        min_ms: s.min_ms,
        max_ms: s.max_ms,
        avg_ms: s.avg_ms(),
        p50_ms: s.quantile(0.5),
        p90_ms: s.quantile(0.9),
        p95_ms: s.quantile(0.95),
        p99_ms: s.quantile(0.99),
        p999_ms: s.quantile(0.999),
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Standard => "standard",
        Mode::Persistent => "persistent",
        Mode::PersistentRecursive => "persistent_recursive",
    }
}

/// `path` itself or a node below it.
fn within(candidate: &str, path: &str) -> bool {
    path.is_empty()
        || path == "/"
        || candidate == path
        || candidate.strip_prefix(path).is_some_and(|rest| rest.starts_with('/'))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn server_stats(&self, _: Request<ServerStatsRequest>) -> Result<Response<ServerStatsReply>, Status> {
        Ok(Response::new(stats_reply(&crate::fourlw::snapshot(self.core()))))
    }

    async fn list_sessions(&self, _: Request<ListSessionsRequest>) -> Result<Response<ListSessionsReply>, Status> {
        // One lock at a time, never nested: sessions, then the tree, then
        // the connections. The picture may be a moment apart between them,
        // which is as exact as a live server can be described anyway.
        let mut sessions: Vec<(i64, u64, Option<u64>, bool)> = self
            .core()
            .with_sessions(|s| s.iter().map(|x| (x.id, x.timeout.as_millis() as u64, x.conn, x.closing)).collect());
        sessions.sort_unstable_by_key(|s| s.0);
        let ephemerals: HashMap<i64, u64> =
            self.core().with_tree(|t| t.sessions_with_ephemerals().map(|(id, p)| (*id, p.len() as u64)).collect());
        let peers: HashMap<u64, String> =
            self.core().connections().iter().map(|c| (c.id, c.peer.to_string())).collect();
        let sessions = sessions
            .into_iter()
            .map(|(id, timeout_ms, conn, closing)| Session {
                session_id: id,
                timeout_ms,
                ephemerals_count: ephemerals.get(&id).copied().unwrap_or(0),
                remote_addr: conn.and_then(|c| peers.get(&c).cloned()).unwrap_or_default(),
                closing,
            })
            .collect();
        Ok(Response::new(ListSessionsReply { sessions }))
    }

    async fn list_tree(&self, req: Request<ListTreeRequest>) -> Result<Response<ListTreeReply>, Status> {
        let req = req.into_inner();
        let start = path::canonical(&req.path).to_string();
        path::validate(&start).map_err(|why| Status::invalid_argument(format!("path {start:?}: {why}")))?;
        let limit = match req.limit {
            0 => DEFAULT_TREE_LIMIT,
            n => n as usize,
        };
        self.core().with_tree(|tree| {
            if tree.get(&start).is_none() {
                return Err(Status::not_found(format!("no node {start}")));
            }
            let mut nodes = Vec::new();
            let mut truncated = false;
            // Breadth first, so a limit cuts off the deepest nodes and the
            // top of the tree is always whole.
            let mut queue = std::collections::VecDeque::from([(start.clone(), 0u32)]);
            while let Some((p, depth)) = queue.pop_front() {
                let Some(node) = tree.get(&p) else { continue };
                if nodes.len() >= limit {
                    truncated = true;
                    break;
                }
                let s = node.stat();
                if depth < req.depth {
                    // Sorted for the operator reading it; the tree keeps no order.
                    let mut children: Vec<&str> = node.children().iter().collect();
                    children.sort_unstable();
                    queue.extend(children.into_iter().map(|c| (path::join(&p, c), depth + 1)));
                }
                nodes.push(Node {
                    path: p,
                    czxid: s.czxid,
                    mzxid: s.mzxid,
                    pzxid: s.pzxid,
                    ctime: s.ctime,
                    mtime: s.mtime,
                    version: s.version,
                    cversion: s.cversion,
                    aversion: s.aversion,
                    ephemeral_owner: s.ephemeral_owner,
                    data_length: s.data_length,
                    num_children: s.num_children,
                    data: match (node.data(), req.include_data) {
                        (Some(d), true) => d.to_vec(),
                        _ => Vec::new(),
                    },
                    depth,
                });
            }
            Ok(Response::new(ListTreeReply { nodes, truncated }))
        })
    }

    async fn list_watches(&self, req: Request<ListWatchesRequest>) -> Result<Response<ListWatchesReply>, Status> {
        let req = req.into_inner();
        let all = self.core().with_watches(|w| w.list());
        // Watches belong to connections; operators think in sessions.
        let session_of: HashMap<u64, i64> = self
            .core()
            .connections()
            .iter()
            .map(|c| (c.id, c.session_id.load(std::sync::atomic::Ordering::Relaxed)))
            .collect();
        let watches = all
            .into_iter()
            .filter_map(|(p, conn, kind, mode)| {
                let session_id = session_of.get(&conn).copied().unwrap_or(0);
                let wanted = within(&p, &req.path) && (req.session_id == 0 || req.session_id == session_id);
                wanted.then(|| Watch { path: p, session_id, kind: kind.to_string(), mode: mode_name(mode).to_string() })
            })
            .collect();
        Ok(Response::new(ListWatchesReply { watches }))
    }

    async fn expire_session(&self, req: Request<SessionRequest>) -> Result<Response<SessionReply>, Status> {
        let id = req.into_inner().session_id;
        let ephemerals = self.open_session(id)?;
        tracing::info!(session = %SessionId(id), ephemerals = ephemerals.len(), "session expired by the admin API");
        crate::ops::session::close_session(self.core(), id, None);
        Ok(Response::new(SessionReply { ephemerals }))
    }

    async fn close_session(&self, req: Request<SessionRequest>) -> Result<Response<SessionReply>, Status> {
        let id = req.into_inner().session_id;
        let ephemerals = self.open_session(id)?;
        tracing::info!(session = %SessionId(id), ephemerals = ephemerals.len(), "session closed by the admin API");
        crate::ops::session::close_session(self.core(), id, None);
        Ok(Response::new(SessionReply { ephemerals }))
    }

    async fn close_connection(&self, req: Request<SessionRequest>) -> Result<Response<SessionReply>, Status> {
        let id = req.into_inner().session_id;
        let ephemerals = self.open_session(id)?;
        let Some(conn_id) = self.core().with_sessions(|s| s.get(id).and_then(|s| s.conn)) else {
            return Err(Status::failed_precondition(format!("session {} has no connection right now", SessionId(id))));
        };
        let Some(conn) = self.core().connections().into_iter().find(|c| c.id == conn_id) else {
            return Err(Status::failed_precondition(format!("session {}'s connection has just closed", SessionId(id))));
        };
        tracing::info!(session = %SessionId(id), peer = %conn.peer, "connection dropped by the admin API");
        conn.close();
        Ok(Response::new(SessionReply { ephemerals }))
    }

    async fn trigger_snapshot(
        &self,
        _: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotReply>, Status> {
        match self.admin.snapshot_now().await {
            Ok(Some(zxid)) => Ok(Response::new(TriggerSnapshotReply { zxid })),
            Ok(None) => {
                Err(Status::failed_precondition("the server keeps no data dir (--data-dir): nothing to snapshot"))
            }
            Err(e) => Err(Status::internal(format!("{e:#}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn path_filter_takes_the_path_and_below_only() {
        assert!(within("/a", "/a"));
        assert!(within("/a/b", "/a"));
        assert!(!within("/ab", "/a"));
        assert!(within("/anything", "/"));
        assert!(within("/anything", ""));
    }
}
