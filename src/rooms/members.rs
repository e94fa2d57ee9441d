//! One event loop's view of its rooms: for each room with local members, who they are and which
//! wire form each wants. The broker's deliveries name rooms by id; this maps them to member lists.
//!
//! A connection remembers its position in each member list, so leaving is O(1) (swap-remove,
//! and the member moved into the hole is reported so its position can be fixed).

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use super::message::Wire;

/// A broker's name for a room while this process is subscribed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

/// A member of a room on this loop: a connection's slab key and what it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub key: u32,
    pub wire: Wire,
    /// Wants `presence_join` / `presence_leave` events.
    pub presence: bool,
}

#[derive(Debug)]
pub struct LocalRoom {
    pub id: RoomId,
    pub name: Arc<str>,
    pub members: Vec<Member>,
    /// Joins sent to the broker whose result has not arrived yet.
    pub pending: u32,
    /// Where the room's members are: the epoch and seq of the last message delivered here (or
    /// of the last join's answer). Written into the ids of event streams of several rooms.
    pub last: Option<(Arc<str>, u64)>,
}

#[derive(Debug, Default)]
pub struct LocalRooms {
    rooms: Slab<LocalRoom>,
    by_name: HashMap<Arc<str>, u32>,
    by_id: HashMap<RoomId, u32>,
}

impl LocalRooms {
    /// The local index of `name`, if this loop has it.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Add a room this loop just subscribed to.
    pub fn insert(&mut self, id: RoomId, name: Arc<str>) -> u32 {
        let idx =
            self.rooms.insert(LocalRoom { id, name: name.clone(), members: Vec::new(), pending: 0, last: None }) as u32;
        self.by_name.insert(name, idx);
        self.by_id.insert(id, idx);
        idx
    }

    pub fn by_id(&self, id: RoomId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub fn get(&self, idx: u32) -> Option<&LocalRoom> {
        self.rooms.get(idx as usize)
    }

    pub fn get_mut(&mut self, idx: u32) -> Option<&mut LocalRoom> {
        self.rooms.get_mut(idx as usize)
    }

    /// Add `m` to room `idx`; returns its position.
    pub fn add(&mut self, idx: u32, m: Member) -> u32 {
        let r = &mut self.rooms[idx as usize];
        r.members.push(m);
        (r.members.len() - 1) as u32
    }

    /// Remove the member at `pos` of room `idx`. Returns the key of the member moved into that
    /// position, if any (its position is now `pos`).
    pub fn remove(&mut self, idx: u32, pos: u32) -> Option<u32> {
        let r = self.rooms.get_mut(idx as usize)?;
        let pos = pos as usize;
        if pos >= r.members.len() {
            return None;
        }
        r.members.swap_remove(pos);
        if r.members.capacity() > 64 && r.members.len() < r.members.capacity() / 4 {
            r.members.shrink_to(r.members.len() * 2);
        }
        r.members.get(pos).map(|m| m.key)
    }

    /// Forget room `idx` if it has no members and no joins in flight; returns it so the caller
    /// can unsubscribe.
    pub fn release_if_unused(&mut self, idx: u32) -> Option<LocalRoom> {
        let r = self.rooms.get(idx as usize)?;
        if !r.members.is_empty() || r.pending > 0 {
            return None;
        }
        let r = self.rooms.remove(idx as usize);
        self.by_name.remove(&r.name);
        self.by_id.remove(&r.id);
        Some(r)
    }

    /// Rooms with members (or joins in flight) on this loop.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(key: u32) -> Member {
        Member { key, wire: Wire::Raw, presence: false }
    }

    #[test]
    fn swap_remove_reports_the_moved_member_and_unused_rooms_go() {
        let mut rooms = LocalRooms::default();
        let r = rooms.insert(RoomId(9), "r".into());
        assert_eq!(rooms.find("r"), Some(r));
        assert_eq!(rooms.by_id(RoomId(9)), Some(r));
        let p10 = rooms.add(r, m(10));
        rooms.add(r, m(11));
        rooms.add(r, m(12));
        assert_eq!(rooms.remove(r, p10), Some(12), "12 moved into slot 0");
        assert_eq!(rooms.get(r).unwrap().members.iter().map(|m| m.key).collect::<Vec<_>>(), vec![12, 11]);
        assert!(rooms.release_if_unused(r).is_none(), "still has members");
        assert_eq!(rooms.remove(r, 1), None);
        assert_eq!(rooms.remove(r, 0), None);
        rooms.get_mut(r).unwrap().pending = 1;
        assert!(rooms.release_if_unused(r).is_none(), "a join is in flight");
        rooms.get_mut(r).unwrap().pending = 0;
        assert_eq!(rooms.release_if_unused(r).map(|x| x.id), Some(RoomId(9)));
        assert!(rooms.is_empty() && rooms.find("r").is_none() && rooms.by_id(RoomId(9)).is_none());
    }
}
