//! addauth and whoAmI: the identities a connection holds.

use zk_wire::records::{AuthPacket, ClientInfo, Id, WhoAmIResponse};
use zk_wire::{ErrorCode, Response};

use crate::acl;
use crate::clients::Client;
use crate::core::Core;
use crate::session::SessionId;

/// The most identities one connection may hold (its `ip` id, `super`, and
/// the digest ids it added). A real client adds one or two; ZooKeeper keeps
/// every id it is given, so a client adding distinct ids in a loop grew
/// the server's memory, and each addauth re-orders them all. Bounded, the
/// re-ordering costs a bounded time.
const MAX_AUTH_IDS: usize = 16;

/// The longest `user:password` an addauth may carry. Digest users are
/// short names; a megabyte one costs a megabyte per connection and the
/// hashing of it on every ACL check.
const MAX_AUTH_BYTES: usize = 1024;

/// addauth. Returns false when the connection must close (the
/// authentication failed, as ZooKeeper answers it).
pub(super) fn auth(core: &Core, client: &mut Client, xid: i32, auth: &AuthPacket) -> bool {
    let ok = match auth.scheme.as_str() {
        // Over a bound, the answer is ZooKeeper's for any failed
        // addauth: AuthFailed, and the connection closes. The ids held
        // stay bounded, so ordering them (below) costs a bounded time.
        "digest" if auth.auth.len() > MAX_AUTH_BYTES || client.auth.len() >= MAX_AUTH_IDS => {
            tracing::info!(
                session = %SessionId(client.session_id),
                bytes = auth.auth.len(),
                ids = client.auth.len(),
                max_bytes = MAX_AUTH_BYTES,
                max_ids = MAX_AUTH_IDS,
                "addauth over the per-connection bound"
            );
            false
        }
        "digest" => {
            let id = acl::digest(&String::from_utf8_lossy(&auth.auth));
            if core.config.super_digest.as_deref() == Some(id.as_str()) {
                client.auth.push(Id { scheme: "super".into(), id: String::new() });
            }
            let id = Id { scheme: "digest".into(), id };
            if !client.auth.contains(&id) {
                client.auth.push(id);
            }
            // whoAmI and `auth` ACLs list the ids in ZooKeeper's order.
            acl::order_like_zookeeper(&mut client.auth);
            true
        }
        "ip" => true,
        _ => false,
    };
    if ok {
        // Watch events are filtered by the ids the connection holds now.
        core.watches.lock().set_auth(client.conn.id, &client.auth);
    }
    let result = if ok { Ok(&Response::Empty) } else { Err(ErrorCode::AuthFailed) };
    client.reply(crate::frames::reply(xid, 0, result), 0);
    if !ok {
        tracing::info!(session = %SessionId(client.session_id), scheme = %auth.scheme, "authentication failed; closing the connection");
    }
    ok
}

/// whoAmI: the connection's identities, a digest shown by its user name.
pub(super) fn who_am_i(client: &Client) -> Response {
    let client_info = client
        .auth
        .iter()
        .map(|id| ClientInfo {
            auth_scheme: id.scheme.clone(),
            user: match id.scheme.as_str() {
                "digest" => id.id.split(':').next().unwrap_or_default().to_string(),
                _ => id.id.clone(),
            },
        })
        .collect();
    Response::WhoAmI(WhoAmIResponse { client_info })
}
