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
    /// By the hash of the request's key (lower-case question and flag byte); the slot holds
    /// what tells the key itself, so two keys of one hash are told apart (the later replaces
    /// the earlier). Boxed: a table has up to twice as many buckets as entries, and an empty
    /// bucket then costs a pointer, not a slot.
    slots: HashMap<u64, Box<Slot>, foldhash::fast::FixedState>,
    /// The chain every slot was made by; held weakly: compared by address without keeping it
    /// alive, and its address cannot be reused while held. A reload's new chain empties the
    /// table.
    chain: Weak<Chain>,
    hasher: foldhash::fast::FixedState,
    capacity: usize,
    /// Rooms made so far: picks the hash bit of the next.
    rooms: u32,
}

/// Marks "not read" in a slot's serial and namespaces.
const UNREAD: u64 = u64::MAX;

/// One kept answer: 64 bytes beside its template, as there is one per question.
struct Slot {
    generation: u64,
    /// The serial the answer wrote, or [`UNREAD`].
    serial: u64,
    /// When the namespaces were read: the generation they last changed at, or [`UNREAD`].
    namespaces: u64,
    /// The Service entry read (until replaced, the answer from it stands). An answer that
    /// read several (a CNAME from one Service to another) is kept as `whole`.
    service: Option<Arc<Entry>>,
    whole: bool,
    answer: Answer,
}

const _: () = assert!(
    std::mem::size_of::<Slot>() <= 64,
    "a slot in one 64-byte allocation"
);

/// A kept answer, and what tells its key.
enum Answer {
    /// The full path must answer this question (it forwards, or the cache keeps it); the key.
    Full(Box<[u8]>),
    /// This template, for the key that is its question in lower case and then this flag byte
    /// (the template holds the question, so the key is not kept twice).
    Template(Template, u8),
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
            chain: Weak::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x1dea),
            capacity,
            rooms: 0,
        }
    }

    /// What is kept for `key` asked of `chain` while its index is `index`.
    pub fn get(&self, key: &[u8], chain: &Arc<Chain>, index: &Index) -> Kept<'_> {
        if !std::ptr::eq(self.chain.as_ptr(), Arc::as_ptr(chain)) {
            return Kept::Unknown;
        }
        match self.slots.get(&self.hasher.hash_one(key)) {
            Some(slot) if slot.is_for(key) && slot.holds(index) => match &slot.answer {
                Answer::Template(t, _) => Kept::Answer(t),
                Answer::Full(_) => Kept::Full,
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
        if !std::ptr::eq(self.chain.as_ptr(), Arc::as_ptr(chain)) {
            self.slots.clear();
            self.chain = Arc::downgrade(chain);
        }
        let hash = self.hasher.hash_one(key);
        if self.slots.len() >= self.capacity && !self.slots.contains_key(&hash) {
            let bit = self.rooms % 64;
            self.rooms += 1;
            let mixer = self.slots.hasher().clone();
            self.slots.retain(|h, _| mixer.hash_one(h) >> bit & 1 == 0);
        }
        let answer = match template {
            Some(t)
                if key
                    .split_last()
                    .is_some_and(|(_, q)| same_question(q, t.question())) =>
            {
                Answer::Template(t, key[key.len() - 1])
            }
            // A key that is not the template's question (never, from the chain) keeps
            // nothing.
            Some(_) => return,
            None => Answer::Full(key.into()),
        };
        self.slots.insert(
            hash,
            Box::new(Slot {
                generation: index.snapshot.generation,
                serial: if reads.serial {
                    index.snapshot.last_change
                } else {
                    UNREAD
                },
                namespaces: if reads.namespaces {
                    index.namespaces_since
                } else {
                    UNREAD
                },
                whole: reads.whole || reads.services.len() > 1,
                service: reads.services.into_iter().next(),
                answer,
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

/// Whether two wire questions (name, type, class) are the same question: names alike but for
/// case (label lengths are below 64, so never taken for letters), type and class equal.
fn same_question(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.len() >= 4
        && a[..a.len() - 4].eq_ignore_ascii_case(&b[..b.len() - 4])
        && a[a.len() - 4..] == b[b.len() - 4..]
}

impl Slot {
    /// Whether this slot was kept for `key`.
    fn is_for(&self, key: &[u8]) -> bool {
        match &self.answer {
            Answer::Full(k) => **k == *key,
            Answer::Template(t, flag) => key
                .split_last()
                .is_some_and(|(f, q)| f == flag && same_question(q, t.question())),
        }
    }

    /// Whether this answer is still the one its chain gives from `index`.
    fn holds(&self, index: &Index) -> bool {
        let snapshot = &index.snapshot;
        if !snapshot.synced {
            return false;
        }
        if snapshot.generation == self.generation {
            return true;
        }
        !self.whole
            && (self.serial == UNREAD || self.serial == snapshot.last_change)
            && (self.namespaces == UNREAD || self.namespaces == index.namespaces_since)
            && self.service.as_ref().is_none_or(|e| !e.replaced())
    }
}

#[cfg(test)]
mod tests {
    use super::same_question;

    #[test]
    fn a_question_is_the_same_whatever_its_names_case_but_not_its_types() {
        // web.ns, type A (1), class IN (1).
        let lower = b"\x03web\x02ns\x00\x00\x01\x00\x01";
        assert!(same_question(lower, b"\x03WeB\x02nS\x00\x00\x01\x00\x01"));
        // Types 0x41 and 0x61 differ as letters would by case: still two questions.
        assert!(!same_question(
            b"\x03web\x02ns\x00\x00\x41\x00\x01",
            b"\x03web\x02ns\x00\x00\x61\x00\x01"
        ));
        assert!(!same_question(lower, b"\x03web\x02nt\x00\x00\x01\x00\x01"));
        assert!(!same_question(lower, &lower[1..]));
    }
}
