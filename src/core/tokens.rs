//! Session tokens, cluster-wide: which participant a token belongs to.
//!
//! A participant proves it owns a session with its token, on whatever node it
//! talks to (a publish on its home node, a resume on another one after a
//! failover). So every node keeps every live participant's token: its own
//! joiners' tokens, and those its peers grant it through the mesh alongside
//! the "joined" events. A participant has one token at a time, and loses it
//! when it is announced as left.

use crate::core::FastMap;
use crate::proto::{Event, EventKind, SessionGrant};

#[derive(Debug, Default)]
pub struct SessionTokens {
    /// Token to participant id.
    by_token: FastMap<String, String>,
    /// Participant id to token: the other direction.
    token_of: FastMap<String, String>,
}

impl SessionTokens {
    /// Records a participant's token, replacing any earlier one of it. A
    /// grant with an empty id or token is ignored.
    pub fn grant(&mut self, grant: SessionGrant) {
        if grant.participant_id.is_empty() || grant.session_token.is_empty() {
            return;
        }
        if let Some(old) = self
            .token_of
            .insert(grant.participant_id.clone(), grant.session_token.clone())
        {
            self.by_token.remove(&old);
        }
        self.by_token
            .insert(grant.session_token, grant.participant_id);
    }

    /// The participant owning `token`.
    pub fn owner(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }

    /// The token of `participant_id`.
    pub fn token_of(&self, participant_id: &str) -> Option<&str> {
        self.token_of.get(participant_id).map(String::as_str)
    }

    /// Forgets the token of a participant that left.
    pub fn forget(&mut self, participant_id: &str) {
        if let Some(token) = self.token_of.remove(participant_id) {
            self.by_token.remove(&token);
        }
    }

    /// The tokens of the participants that `events` announce joined.
    pub fn grants_for<'a>(&self, events: impl IntoIterator<Item = &'a Event>) -> Vec<SessionGrant> {
        events
            .into_iter()
            .filter(|e| e.kind() == EventKind::Joined)
            .filter_map(|e| {
                Some(SessionGrant {
                    participant_id: e.participant_id.clone(),
                    session_token: self.token_of.get(&e.participant_id)?.clone(),
                })
            })
            .collect()
    }

    /// Every token known, for a joining node's snapshot.
    pub fn grants(&self) -> Vec<SessionGrant> {
        self.token_of
            .iter()
            .map(|(pid, token)| SessionGrant {
                participant_id: pid.clone(),
                session_token: token.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(pid: &str, token: &str) -> SessionGrant {
        SessionGrant {
            participant_id: pid.into(),
            session_token: token.into(),
        }
    }

    #[test]
    fn a_new_grant_replaces_the_participants_old_token() {
        let mut t = SessionTokens::default();
        t.grant(grant("p", "old"));
        t.grant(grant("p", "new"));
        assert_eq!(t.owner("new"), Some("p"));
        assert_eq!(t.owner("old"), None);
        t.forget("p");
        assert_eq!(t.owner("new"), None);
        t.grant(grant("", "x"));
        t.grant(grant("q", ""));
        assert!(t.grants().is_empty(), "empty grants are ignored");
    }
}
