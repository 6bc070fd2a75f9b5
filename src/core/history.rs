//! Recent events, bounded by count and by bytes, oldest dropped first.
//!
//! Used to replay what a resuming participant or a catching-up peer missed.
//! A replay that reaches past what is kept is reported as a gap, never
//! silently shortened.

use std::collections::VecDeque;
use std::sync::Arc;

use prost::Message;

use crate::proto::Event;

#[derive(Debug)]
pub struct History {
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl History {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    pub fn push(&mut self, event: Arc<Event>) {
        let size = event.encoded_len();
        self.events.push_back((event, size));
        self.bytes += size;
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            match self.events.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Event>> {
        self.events.iter().map(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(text: &str) -> Arc<Event> {
        Arc::new(Event {
            text: text.into(),
            ..Default::default()
        })
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut h = History::new(3, 1_000);
        for i in 0..5 {
            h.push(ev(&i.to_string()));
        }
        let kept: Vec<_> = h.iter().map(|e| e.text.clone()).collect();
        assert_eq!(kept, ["2", "3", "4"]);

        let mut h = History::new(100, 50);
        for _ in 0..10 {
            h.push(ev(&"x".repeat(20)));
        }
        assert!(h.bytes() <= 50, "kept {} bytes", h.bytes());
        assert_eq!(h.len(), 2);
    }
}
