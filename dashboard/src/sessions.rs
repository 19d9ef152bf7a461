//! Who is connected: the server's sessions, which the ZooKeeper protocol
//! itself cannot list. Two sources:
//!
//! - the coordinator's admin API (`--admin`, gRPC `ListSessions`): every
//!   open session, with its ephemeral count and its client's address, even
//!   while the client is away reconnecting;
//! - otherwise the `cons` four-letter word on the client port, which both
//!   the coordinator and Apache ZooKeeper answer when it is whitelisted
//!   (`4lw.commands.whitelist` / `--4lw-whitelist`): the connected sessions.
//!
//! Sessions have no watches, so they refresh with the poll, not at once.

use std::time::Duration;

use admin_api::admin_client::AdminClient;
use admin_api::ListSessionsRequest;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Longest wait for either source: a slow answer must not hold up the page.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// A `cons` reply larger than this is cut (thousands of connections).
const MAX_CONS_BYTES: u64 = 4 << 20;

pub enum Sessions {
    Admin(AdminClient<InterceptedService<Channel, Bearer>>),
    Cons(String),
}

/// Adds `authorization: Bearer <token>` to every admin call: the session
/// list is for token holders only.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl Sessions {
    /// `admin` is the coordinator's admin address (HOST:PORT); without it,
    /// `cons` goes to the first server of the connect string.
    pub fn new(admin: Option<&str>, zk: &str, token: Option<String>) -> anyhow::Result<Sessions> {
        if let Some(addr) = admin {
            let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
            // Lazy: the dashboard starts even if the admin listener is not
            // up yet, and the channel reconnects by itself.
            let channel = Channel::from_shared(uri.clone())
                .map_err(|e| anyhow::anyhow!("--admin {addr:?} is not an address: {e}"))?
                .connect_timeout(ASK_TIMEOUT)
                .connect_lazy();
            let bearer = match token {
                Some(t) => Some(
                    MetadataValue::try_from(format!("Bearer {t}"))
                        .map_err(|_| anyhow::anyhow!("the admin token is not printable ASCII"))?,
                ),
                None => None,
            };
            return Ok(Sessions::Admin(AdminClient::with_interceptor(channel, Bearer(bearer))));
        }
        // "host1:2181,host2:2181/chroot" -> "host1:2181"
        let first = zk.split(',').next().unwrap_or(zk);
        let first = first.split('/').next().unwrap_or(first);
        Ok(Sessions::Cons(first.to_string()))
    }

    /// `{"source": .., "list": [..]}` or `{"source": .., "error": ..}`.
    pub async fn fetch(&mut self) -> Value {
        match self {
            Sessions::Admin(client) => {
                let source = "admin API";
                let mut client = client.clone();
                match tokio::time::timeout(ASK_TIMEOUT, client.list_sessions(ListSessionsRequest {})).await {
                    Ok(Ok(reply)) => {
                        let list: Vec<Value> = reply
                            .into_inner()
                            .sessions
                            .into_iter()
                            .map(|s| {
                                json!({
                                    "id": format!("{:#x}", s.session_id), "timeout_ms": s.timeout_ms,
                                    "ephemerals": s.ephemerals_count,
                                    "remote": if s.remote_addr.is_empty() { Value::Null } else { s.remote_addr.into() },
                                })
                            })
                            .collect();
                        json!({"source": source, "list": list})
                    }
                    Ok(Err(status)) => json!({"source": source, "error": status.message()}),
                    Err(_) => json!({"source": source, "error": "no answer within 2 s"}),
                }
            }
            Sessions::Cons(addr) => {
                let source = "4lw cons";
                match tokio::time::timeout(ASK_TIMEOUT, cons(addr)).await {
                    Ok(Ok(text)) if text.contains("not in the whitelist") => json!({
                        "source": source,
                        "error": "the server does not answer cons (not whitelisted); \
                                  for the coordinator, pass --admin <its admin address>",
                    }),
                    Ok(Ok(text)) => json!({"source": source, "list": parse_cons(&text)}),
                    Ok(Err(e)) => json!({"source": source, "error": e.to_string()}),
                    Err(_) => json!({"source": source, "error": "no answer within 2 s"}),
                }
            }
        }
    }
}

async fn cons(addr: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"cons").await?;
    let mut out = Vec::new();
    // The server closes the connection after the reply.
    s.take(MAX_CONS_BYTES).read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The sessions in a `cons` reply, one line per connection:
/// ` /127.0.0.1:5432[1](queued=0,recved=9,sent=9,sid=0x1000..,lop=..,est=..,to=30000,...)`.
/// Connections without a session (such as the one asking) are skipped.
pub fn parse_cons(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix('/') else { continue };
        let Some((peer, stats)) = rest.split_once('[') else { continue };
        let Some(stats) = stats.split_once('(').and_then(|(_, s)| s.strip_suffix(')')) else { continue };
        let field = |key: &str| stats.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='));
        let Some(sid) = field("sid") else { continue };
        if i64::from_str_radix(sid.trim_start_matches("0x"), 16).unwrap_or(0) == 0 {
            continue;
        }
        let timeout: Option<u64> = field("to").and_then(|t| t.parse().ok());
        out.push((
            sid.to_string(),
            json!({"id": sid, "timeout_ms": timeout, "ephemerals": Value::Null, "remote": peer}),
        ));
    }
    // The server lists connections in no stable order; sorted, an unchanged
    // list gives an unchanged page (and no event).
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::parse_cons;

    #[test]
    fn cons_lines_of_both_servers() {
        // Apache ZooKeeper 3.8's shape, then the coordinator's, then the
        // connection that asked (no session yet).
        let text = " /127.0.0.1:40112[1](queued=0,recved=5,sent=5,sid=0x100012c6f5e0003,lop=PING,est=1700000000000,to=10000,lcxid=0x3,lzxid=0x25,lresp=1700000001000,llat=0,minlat=0,avglat=0.2,maxlat=1)\n \
                    /127.0.0.1:40114[1](queued=0,recved=2,sent=2,sid=0x18c0000000001,lop=NA,est=1700000000000,to=4000,lcxid=0x1,lzxid=0x2)\n \
                    /127.0.0.1:40116[0](queued=0,recved=1,sent=0)\n\n";
        let list = parse_cons(text);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["id"], "0x100012c6f5e0003");
        assert_eq!(list[0]["timeout_ms"], 10000);
        assert_eq!(list[0]["remote"], "127.0.0.1:40112");
        assert_eq!(list[1]["timeout_ms"], 4000);
    }
}
