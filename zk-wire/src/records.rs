//! The records of `zookeeper.jute` that the client protocol carries.
//!
//! Field names follow the `.jute` file (in snake case) so that a reader can
//! hold the two side by side.

use crate::codec::{record, DecodeError, Jute, Reader};

record! {
    /// `org.apache.zookeeper.data.Id`: an authentication scheme and identity.
    pub struct Id { pub scheme: String, pub id: String }
}

record! {
    /// `org.apache.zookeeper.data.ACL`.
    pub struct Acl { pub perms: i32, pub id: Id }
}

record! {
    /// `org.apache.zookeeper.data.Stat`: the metadata every znode carries.
    pub struct Stat {
        pub czxid: i64,
        pub mzxid: i64,
        pub ctime: i64,
        pub mtime: i64,
        pub version: i32,
        pub cversion: i32,
        pub aversion: i32,
        pub ephemeral_owner: i64,
        pub data_length: i32,
        pub num_children: i32,
        pub pzxid: i64,
    }
}

record! {
    /// `org.apache.zookeeper.data.ClientInfo` (whoAmI).
    pub struct ClientInfo { pub auth_scheme: String, pub user: String }
}

/// `ConnectRequest`, with the `readOnly` byte that clients since 3.4 append
/// outside the jute definition. Old clients omit it, and the server mirrors
/// whichever form it received in its reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectRequest {
    pub protocol_version: i32,
    pub last_zxid_seen: i64,
    pub time_out: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    /// `None` when the client sent no readOnly byte.
    pub read_only: Option<bool>,
}

impl Jute for ConnectRequest {
    fn write(&self, out: &mut Vec<u8>) {
        self.protocol_version.write(out);
        self.last_zxid_seen.write(out);
        self.time_out.write(out);
        self.session_id.write(out);
        self.passwd.write(out);
        if let Some(ro) = self.read_only {
            ro.write(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectRequest {
            protocol_version: r.i32()?,
            last_zxid_seen: r.i64()?,
            time_out: r.i32()?,
            session_id: r.i64()?,
            passwd: Jute::read(r)?,
            read_only: if r.remaining() > 0 { Some(r.bool()?) } else { None },
        })
    }
}

/// `ConnectResponse`, with the optional trailing `readOnly` byte.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectResponse {
    pub protocol_version: i32,
    pub time_out: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: Option<bool>,
}

impl Jute for ConnectResponse {
    fn write(&self, out: &mut Vec<u8>) {
        self.protocol_version.write(out);
        self.time_out.write(out);
        self.session_id.write(out);
        self.passwd.write(out);
        if let Some(ro) = self.read_only {
            ro.write(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConnectResponse {
            protocol_version: r.i32()?,
            time_out: r.i32()?,
            session_id: r.i64()?,
            passwd: Jute::read(r)?,
            read_only: if r.remaining() > 0 { Some(r.bool()?) } else { None },
        })
    }
}

record! { pub struct RequestHeader { pub xid: i32, pub op: i32 } }
record! { pub struct ReplyHeader { pub xid: i32, pub zxid: i64, pub err: i32 } }
record! { pub struct MultiHeader { pub op: i32, pub done: bool, pub err: i32 } }
record! { pub struct AuthPacket { pub auth_type: i32, pub scheme: String, pub auth: Vec<u8> } }

record! {
    pub struct SetWatches {
        pub relative_zxid: i64,
        pub data_watches: Vec<String>,
        pub exist_watches: Vec<String>,
        pub child_watches: Vec<String>,
    }
}

record! {
    pub struct SetWatches2 {
        pub relative_zxid: i64,
        pub data_watches: Vec<String>,
        pub exist_watches: Vec<String>,
        pub child_watches: Vec<String>,
        pub persistent_watches: Vec<String>,
        pub persistent_recursive_watches: Vec<String>,
    }
}

record! {
    /// The body of create (1), create2 (15) and createContainer (19).
    pub struct CreateRequest { pub path: String, pub data: Option<Vec<u8>>, pub acl: Vec<Acl>, pub flags: i32 }
}
record! {
    pub struct CreateTtlRequest { pub path: String, pub data: Option<Vec<u8>>, pub acl: Vec<Acl>, pub flags: i32, pub ttl: i64 }
}
record! { pub struct DeleteRequest { pub path: String, pub version: i32 } }
record! {
/// The body of exists, getData, getChildren and getChildren2: a path and a watch flag.
pub struct PathWatchRequest { pub path: String, pub watch: bool } }
record! {
/// The body of getACL, sync, getAllChildrenNumber and getEphemerals: a path alone.
pub struct PathRequest { pub path: String } }
record! { pub struct SetDataRequest { pub path: String, pub data: Option<Vec<u8>>, pub version: i32 } }
record! { pub struct SetAclRequest { pub path: String, pub acl: Vec<Acl>, pub version: i32 } }
record! { pub struct CheckVersionRequest { pub path: String, pub version: i32 } }
record! { pub struct AddWatchRequest { pub path: String, pub mode: i32 } }
record! {
/// The body of checkWatches and removeWatches.
pub struct WatchTypeRequest { pub path: String, pub watcher_type: i32 } }

record! { pub struct WatcherEvent { pub event_type: i32, pub state: i32, pub path: String } }
record! { pub struct ErrorResponse { pub err: i32 } }
record! {
/// The body of a create reply, and of sync's (`SyncResponse` has the same shape).
pub struct PathResponse { pub path: String } }
record! { pub struct Create2Response { pub path: String, pub stat: Stat } }
record! {
/// The body of exists, setData and setACL replies.
pub struct StatResponse { pub stat: Stat } }
record! { pub struct GetDataResponse { pub data: Option<Vec<u8>>, pub stat: Stat } }
record! {
/// The body of getChildren and getEphemerals replies.
pub struct ChildrenResponse { pub children: Vec<String> } }
record! { pub struct GetChildren2Response { pub children: Vec<String>, pub stat: Stat } }
record! { pub struct GetAclResponse { pub acl: Vec<Acl>, pub stat: Stat } }
record! { pub struct GetAllChildrenNumberResponse { pub total_number: i32 } }
record! { pub struct WhoAmIResponse { pub client_info: Vec<ClientInfo> } }
