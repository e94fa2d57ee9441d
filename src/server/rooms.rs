//! Chat rooms: who is in which room on this loop, and the seam through which a relayed frame
//! reaches members elsewhere.
//!
//! A room's members may live on any loop. Each loop keeps its own member lists ([`LocalRooms`]);
//! a process-wide [`Registry`] knows, per room, which loops hold members (a bitset, changed only
//! when a loop's first member joins or last member leaves). A relayed message is framed once into
//! `Bytes` and shared: the sending loop writes it to its own members, and [`Fanout::publish`]
//! hands it to the other loops' [`Mailbox`]es. Cross-node fan-out (Redis pub/sub, a later issue)
//! is another [`Fanout`] implementation; the event loop does not change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use slab::Slab;

/// A room as seen by the whole process.
#[derive(Debug)]
pub struct RoomShared {
    /// Never reused, so a late delivery can never reach a different room of the same name.
    pub id: u64,
    pub name: Box<str>,
    /// Bit per loop: that loop has at least one member.
    loops: Box<[AtomicU64]>,
}

impl RoomShared {
    /// Loops holding members, except `skip`.
    pub fn other_loops(&self, skip: usize) -> impl Iterator<Item = usize> + '_ {
        self.loops.iter().enumerate().flat_map(move |(w, word)| {
            let mut bits = word.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
            .filter(move |&l| l != skip)
        })
    }

    fn set(&self, l: usize, on: bool) {
        let bit = 1u64 << (l % 64);
        if on {
            self.loops[l / 64].fetch_or(bit, Ordering::AcqRel);
        } else {
            self.loops[l / 64].fetch_and(!bit, Ordering::AcqRel);
        }
    }

    fn empty(&self) -> bool {
        self.loops.iter().all(|w| w.load(Ordering::Acquire) == 0)
    }
}

/// Process-wide room names → rooms. Touched only on a loop's first join / last leave of a room.
#[derive(Debug)]
pub struct Registry {
    rooms: Mutex<HashMap<Box<str>, Arc<RoomShared>>>,
    next_id: AtomicU64,
    loops: usize,
}

impl Registry {
    pub fn new(loops: usize) -> Self {
        Registry { rooms: Mutex::default(), next_id: AtomicU64::new(1), loops }
    }

    /// Loop `l` now has a member in `name`.
    pub fn join(&self, l: usize, name: &str) -> Arc<RoomShared> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(name.into()).or_insert_with(|| {
            Arc::new(RoomShared {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                name: name.into(),
                loops: (0..self.loops.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            })
        });
        room.set(l, true);
        room.clone()
    }

    /// Loop `l` no longer has members in `room`. Bits change under the lock, so a room is removed
    /// from the map only when no loop can be joining it concurrently.
    pub fn leave(&self, l: usize, room: &RoomShared) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        room.set(l, false);
        if room.empty() {
            rooms.remove(&room.name);
        }
    }
}

/// What one loop can be asked to do by others.
#[derive(Debug)]
pub enum Command {
    /// Write `frame` to this loop's members of room `room`.
    Deliver { room: u64, frame: Bytes },
    /// Stop accepting, close every connection with 1001, exit once drained or at the deadline.
    Shutdown { drain: std::time::Duration },
}

/// A loop's inbox.
pub type Mailbox = crate::net::mailbox::Mailbox<Command>;

/// The seam for delivering relayed frames beyond the sending loop.
pub trait Fanout: Send + Sync + std::fmt::Debug {
    /// Loop `l`'s first member joined `name`.
    fn join(&self, l: usize, name: &str) -> Arc<RoomShared>;
    /// Loop `l`'s last member left `room`.
    fn leave(&self, l: usize, room: &RoomShared);
    /// Deliver `frame` to `room`'s members outside loop `l` (which serves its own). Returns how
    /// many loops it was handed to.
    fn publish(&self, l: usize, room: &RoomShared, frame: &Bytes) -> usize;
}

/// Fan-out between the loops of this process.
#[derive(Debug)]
pub struct LocalFanout {
    registry: Registry,
    mailboxes: Vec<Arc<Mailbox>>,
}

impl LocalFanout {
    pub fn new(mailboxes: Vec<Arc<Mailbox>>) -> Self {
        LocalFanout { registry: Registry::new(mailboxes.len()), mailboxes }
    }
}

impl Fanout for LocalFanout {
    fn join(&self, l: usize, name: &str) -> Arc<RoomShared> {
        self.registry.join(l, name)
    }

    fn leave(&self, l: usize, room: &RoomShared) {
        self.registry.leave(l, room)
    }

    fn publish(&self, l: usize, room: &RoomShared, frame: &Bytes) -> usize {
        let mut n = 0;
        for other in room.other_loops(l) {
            if let Some(mb) = self.mailboxes.get(other) {
                mb.send(Command::Deliver { room: room.id, frame: frame.clone() });
                n += 1;
            }
        }
        n
    }
}

/// A room's members on one loop.
#[derive(Debug)]
pub struct LocalRoom {
    pub shared: Arc<RoomShared>,
    /// Connection slab keys. A connection stores its index here for O(1) removal.
    pub members: Vec<u32>,
}

/// One loop's rooms.
#[derive(Debug, Default)]
pub struct LocalRooms {
    rooms: Slab<LocalRoom>,
    by_name: HashMap<Box<str>, u32>,
    by_id: HashMap<u64, u32>,
}

/// Where a connection sits: its room's local index and its position in the member list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub room: u32,
    pub pos: u32,
}

impl LocalRooms {
    /// Add member `key` to `name`, registering the room with `fanout` if it is new on this loop.
    pub fn join(&mut self, fanout: &dyn Fanout, l: usize, name: &str, key: u32) -> Seat {
        let idx = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                let shared = fanout.join(l, name);
                let id = shared.id;
                let i = self.rooms.insert(LocalRoom { shared, members: Vec::new() }) as u32;
                self.by_name.insert(name.into(), i);
                self.by_id.insert(id, i);
                i
            }
        };
        let room = &mut self.rooms[idx as usize];
        room.members.push(key);
        Seat { room: idx, pos: (room.members.len() - 1) as u32 }
    }

    /// Remove the member at `seat`. Returns the key of the member moved into its place (whose
    /// seat position is now `seat.pos`), if any. Unregisters the room when it empties.
    pub fn leave(&mut self, fanout: &dyn Fanout, l: usize, seat: Seat) -> Option<u32> {
        let room = self.rooms.get_mut(seat.room as usize)?;
        let pos = seat.pos as usize;
        if pos >= room.members.len() {
            return None;
        }
        room.members.swap_remove(pos);
        if room.members.is_empty() {
            let room = self.rooms.remove(seat.room as usize);
            self.by_name.remove(&room.shared.name);
            self.by_id.remove(&room.shared.id);
            fanout.leave(l, &room.shared);
            return None;
        }
        if room.members.capacity() > 64 && room.members.len() < room.members.capacity() / 4 {
            room.members.shrink_to(room.members.len() * 2);
        }
        room.members.get(pos).copied()
    }

    pub fn get(&self, idx: u32) -> Option<&LocalRoom> {
        self.rooms.get(idx as usize)
    }

    pub fn by_id(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Rooms with members on this loop.
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

    #[derive(Debug)]
    struct Recorder(Registry);
    impl Fanout for Recorder {
        fn join(&self, l: usize, name: &str) -> Arc<RoomShared> {
            self.0.join(l, name)
        }
        fn leave(&self, l: usize, room: &RoomShared) {
            self.0.leave(l, room)
        }
        fn publish(&self, _: usize, _: &RoomShared, _: &Bytes) -> usize {
            0
        }
    }

    #[test]
    fn registry_tracks_loops_and_forgets_empty_rooms() {
        let r = Registry::new(70);
        let a0 = r.join(0, "a");
        let a69 = r.join(69, "a");
        assert_eq!(a0.id, a69.id);
        assert_eq!(a0.other_loops(0).collect::<Vec<_>>(), vec![69]);
        assert_eq!(a0.other_loops(5).collect::<Vec<_>>(), vec![0, 69]);
        r.leave(0, &a0);
        r.leave(69, &a0);
        let again = r.join(3, "a");
        assert_ne!(again.id, a0.id, "a new room after the old one emptied");
    }

    #[test]
    fn local_rooms_swap_remove_reports_the_moved_member() {
        let f = Recorder(Registry::new(1));
        let mut rooms = LocalRooms::default();
        let s1 = rooms.join(&f, 0, "r", 10);
        let _s2 = rooms.join(&f, 0, "r", 11);
        let s3 = rooms.join(&f, 0, "r", 12);
        assert_eq!((s1.pos, s3.pos), (0, 2));
        assert_eq!(rooms.leave(&f, 0, s1), Some(12), "12 moved into slot 0");
        assert_eq!(rooms.get(s1.room).unwrap().members, vec![12, 11]);
        assert_eq!(rooms.leave(&f, 0, Seat { room: s1.room, pos: 1 }), None);
        assert_eq!(rooms.leave(&f, 0, Seat { room: s1.room, pos: 0 }), None);
        assert!(rooms.is_empty());
    }
}
