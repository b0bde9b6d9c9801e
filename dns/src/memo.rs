//! Cluster answers kept as bytes. A receiving thread keeps, per question, the reply the full
//! path gives as a [`Template`] beside what that answer read of the index ([`Reads`]), and
//! answers the question again by copying the template and patching the ID, flags, the
//! question's spelling and OPT — for as long as the index still holds what was read: the same
//! Service entries, namespaces and SOA serial (or, for anything else, the same generation). So
//! a Service that changes makes only its own names' answers be made afresh.
//!
//! The table is bounded: when it is full, about half of it (the questions whose hash has a
//! given bit, a different bit each time) makes room, so its memory is bounded by its capacity
//! whatever is asked, and a working set smaller than it stays.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Weak};

use crate::answer::Reads;
use crate::chain::Chain;
use crate::index::{Entry, Index};
use crate::wire::Template;

/// Questions kept per receiving thread unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 1 << 17;

/// One thread's kept answers.
#[derive(Default)]
pub struct Memo {
    /// By the request's key (lower-case question and flag byte). Boxed: a table has up to
    /// twice as many buckets as entries, and an empty bucket then costs a pointer, not a slot.
    slots: HashMap<Box<[u8]>, Box<Slot>, foldhash::fast::FixedState>,
    capacity: usize,
    /// Rooms made so far: picks the hash bit of the next.
    rooms: u32,
}

/// One kept answer. The chain is held weakly: compared by address without keeping it alive,
/// and its address cannot be reused while the slot holds it.
struct Slot {
    chain: Weak<Chain>,
    generation: u64,
    /// The serial the answer wrote, when it wrote one.
    serial: Option<u64>,
    /// When the namespaces were read: the generation they last changed at.
    namespaces: Option<u64>,
    /// The Service entries read (until replaced, the answer from them stands).
    services: Box<[Arc<Entry>]>,
    whole: bool,
    /// `None`: the full path must answer this question (it forwards, or the cache keeps it).
    template: Option<Template>,
}

/// What the table says of a question.
pub enum Kept<'a> {
    /// Answer with this.
    Answer(&'a Template),
    /// The full path answers it, as it did the last time.
    Full,
    /// Nothing current is kept.
    Unknown,
}

impl Memo {
    /// A table of at most `capacity` questions; 0 keeps nothing.
    pub fn new(capacity: usize) -> Memo {
        Memo {
            slots: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0x5eed)),
            capacity,
            rooms: 0,
        }
    }

    /// What is kept for `key` asked of `chain` while its index is `index`.
    pub fn get(&self, key: &[u8], chain: &Arc<Chain>, index: &Index) -> Kept<'_> {
        match self.slots.get(key) {
            Some(slot) if slot.holds(chain, index) => match &slot.template {
                Some(t) => Kept::Answer(t),
                None => Kept::Full,
            },
            _ => Kept::Unknown,
        }
    }

    /// Keeps `template` (or that the full path answers) for `key`, made from `index` after
    /// `reads`; nothing with capacity 0 or an index that has not synced.
    pub fn put(
        &mut self,
        key: &[u8],
        chain: &Arc<Chain>,
        index: &Index,
        reads: Reads,
        template: Option<Template>,
    ) {
        if self.capacity == 0 || !index.snapshot.synced {
            return;
        }
        if self.slots.len() >= self.capacity && !self.slots.contains_key(key) {
            let bit = self.rooms % 64;
            self.rooms += 1;
            let hasher = self.slots.hasher().clone();
            self.slots.retain(|k, _| hasher.hash_one(k) >> bit & 1 == 0);
        }
        self.slots.insert(
            key.into(),
            Box::new(Slot {
                chain: Arc::downgrade(chain),
                generation: index.snapshot.generation,
                serial: reads.serial.then_some(index.snapshot.last_change),
                namespaces: reads.namespaces.then_some(index.namespaces_since),
                services: reads.services.into(),
                whole: reads.whole,
                template,
            }),
        );
    }

    /// Whether this table keeps anything at all.
    pub fn keeps(&self) -> bool {
        self.capacity > 0
    }

    /// Questions kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slot {
    /// Whether this answer is still the one `chain` gives from `index`.
    fn holds(&self, chain: &Arc<Chain>, index: &Index) -> bool {
        let snapshot = &index.snapshot;
        if !std::ptr::eq(self.chain.as_ptr(), Arc::as_ptr(chain)) || !snapshot.synced {
            return false;
        }
        if snapshot.generation == self.generation {
            return true;
        }
        !self.whole
            && self.serial.is_none_or(|s| s == snapshot.last_change)
            && self.namespaces.is_none_or(|n| n == index.namespaces_since)
            && self.services.iter().all(|e| !e.replaced())
    }
}
