//! Interned ACLs, counted by the nodes that use them. Most trees use a
//! handful of distinct ACLs; a node stores a `u32` id instead of a list.

use std::collections::HashMap;
use std::sync::Arc;

use zk_wire::records::Acl;

#[derive(Debug, Clone)]
pub(super) struct AclTable {
    entries: Vec<Option<(Arc<Vec<Acl>>, u32)>>,
    ids: HashMap<Arc<Vec<Acl>>, u32>,
    free: Vec<u32>,
    /// Answered for an id that is not in the table, which no node holds:
    /// an empty ACL grants nothing, so a bug here fails closed.
    none: Arc<Vec<Acl>>,
}

impl AclTable {
    pub(super) fn new() -> Self {
        AclTable { entries: Vec::new(), ids: HashMap::new(), free: Vec::new(), none: Arc::new(Vec::new()) }
    }

    /// The id of `acl`, counting one more user of it.
    pub(super) fn intern(&mut self, acl: &Arc<Vec<Acl>>) -> u32 {
        if let Some(&id) = self.ids.get(acl) {
            self.retain(id);
            return id;
        }
        let entry = Some((acl.clone(), 1));
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(acl.clone(), id);
        id
    }

    pub(super) fn retain(&mut self, id: u32) {
        if let Some(Some((_, refs))) = self.entries.get_mut(id as usize) {
            *refs += 1;
        }
    }

    pub(super) fn release(&mut self, id: u32) {
        let Some(slot) = self.entries.get_mut(id as usize) else { return };
        if let Some((acl, refs)) = slot {
            *refs -= 1;
            if *refs == 0 {
                self.ids.remove(acl);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    pub(super) fn get(&self, id: u32) -> &Arc<Vec<Acl>> {
        match self.entries.get(id as usize) {
            Some(Some((acl, _))) => acl,
            _ => &self.none,
        }
    }

    /// Every id's ACL (an empty list for a free id), as a snapshot's table.
    pub(super) fn table(&self) -> Vec<Arc<Vec<Acl>>> {
        self.entries.iter().map(|e| e.as_ref().map_or_else(|| self.none.clone(), |(acl, _)| acl.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zk_wire::records::Acl;

    use super::super::testing::hdr;
    use super::super::DataTree;
    use crate::txn::{NodeKind, Txn};

    #[test]
    fn acls_are_shared_and_freed_with_their_last_node() {
        let mut t = DataTree::new();
        let mut tr = Vec::new();
        let digest =
            Arc::new(vec![Acl { perms: 31, id: zk_wire::records::Id { scheme: "digest".into(), id: "u:h".into() } }]);
        let with_acl = |path: &str, pcv| Txn::Create {
            path: path.into(),
            data: None,
            acl: digest.clone(),
            kind: NodeKind::Persistent,
            parent_cversion: pcv,
        };
        t.apply(&hdr(1), &with_acl("/x", 1), &mut tr);
        t.apply(&hdr(2), &with_acl("/y", 2), &mut tr);
        let distinct = t.acls.ids.len();
        assert_eq!(t.get("/x").unwrap().acl(), &digest);
        assert_eq!(t.get("/x").unwrap().data(), None, "null data stays null");
        t.apply(&hdr(3), &Txn::Delete { path: "/x".into() }, &mut tr);
        assert_eq!(t.acls.ids.len(), distinct, "still used by /y");
        t.apply(&hdr(4), &Txn::Delete { path: "/y".into() }, &mut tr);
        assert_eq!(t.acls.ids.len(), distinct - 1, "freed with its last node");
    }
}
