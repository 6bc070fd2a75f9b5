//! Session tokens, cluster-wide: which participant a token belongs to.
//!
//! A participant proves it owns a session with its token, on whatever node it
//! talks to (a publish on its home node, a resume on another one after a
//! failover). So every node can verify every live participant's token. It
//! keeps what verifies one, the token's SHA-256, not the token: its own
//! joiners' and those its peers grant it through the mesh alongside the
//! "joined" events. A peer (or anyone reading a snapshot or a relay stream)
//! learns nothing it could publish with. A participant has one token at a
//! time, and loses it when it is announced as left.

use sha2::{Digest, Sha256};

use crate::core::FastMap;
use crate::proto::{Event, EventKind, SessionGrant};

/// What verifies a token: its SHA-256. Tokens are random (122 bits), so
/// the digest does not give the token back.
pub type TokenDigest = [u8; 32];

/// The digest of `token`.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The grant of `participant_id`'s token: its digest, never the token.
pub fn grant_of(participant_id: &str, token: &str) -> SessionGrant {
    grant_of_digest(participant_id, &digest(token))
}

/// The grant of `participant_id`'s token, from its digest.
pub fn grant_of_digest(participant_id: &str, digest: &TokenDigest) -> SessionGrant {
    SessionGrant {
        participant_id: participant_id.to_string(),
        token_digest: digest.to_vec(),
    }
}

#[derive(Debug, Default)]
pub struct SessionTokens {
    /// Token digest to participant id.
    by_digest: FastMap<TokenDigest, String>,
    /// Participant id to token digest: the other direction.
    digest_of: FastMap<String, TokenDigest>,
}

impl SessionTokens {
    /// Records a participant's token digest, replacing any earlier one of
    /// it. A grant with an empty id or a digest of the wrong length is
    /// ignored.
    pub fn grant(&mut self, grant: SessionGrant) {
        let Ok(digest) = TokenDigest::try_from(grant.token_digest.as_slice()) else {
            return;
        };
        if grant.participant_id.is_empty() {
            return;
        }
        if let Some(old) = self.digest_of.insert(grant.participant_id.clone(), digest) {
            self.by_digest.remove(&old);
        }
        self.by_digest.insert(digest, grant.participant_id);
    }

    /// The participant owning `token`.
    pub fn owner(&self, token: &str) -> Option<&str> {
        self.by_digest.get(&digest(token)).map(String::as_str)
    }

    /// The token digest of `participant_id`.
    pub fn digest_of(&self, participant_id: &str) -> Option<TokenDigest> {
        self.digest_of.get(participant_id).copied()
    }

    /// Forgets the token of a participant that left.
    pub fn forget(&mut self, participant_id: &str) {
        if let Some(digest) = self.digest_of.remove(participant_id) {
            self.by_digest.remove(&digest);
        }
    }

    /// The grants of the participants that `events` announce joined.
    pub fn grants_for<'a>(&self, events: impl IntoIterator<Item = &'a Event>) -> Vec<SessionGrant> {
        events
            .into_iter()
            .filter(|e| e.kind() == EventKind::Joined)
            .filter_map(|e| {
                let digest = self.digest_of.get(&e.participant_id)?;
                Some(grant_of_digest(&e.participant_id, digest))
            })
            .collect()
    }

    /// Every grant known, for a joining node's snapshot.
    pub fn grants(&self) -> Vec<SessionGrant> {
        self.digest_of
            .iter()
            .map(|(pid, digest)| grant_of_digest(pid, digest))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_grant_replaces_the_participants_old_token() {
        let mut t = SessionTokens::default();
        t.grant(grant_of("p", "old"));
        t.grant(grant_of("p", "new"));
        assert_eq!(t.owner("new"), Some("p"));
        assert_eq!(t.owner("old"), None);
        t.forget("p");
        assert_eq!(t.owner("new"), None);
        t.grant(grant_of("", "x"));
        t.grant(SessionGrant {
            participant_id: "q".into(),
            token_digest: b"not a digest".to_vec(),
        });
        assert!(
            t.grants().is_empty(),
            "empty or malformed grants are ignored"
        );
    }

    #[test]
    fn grants_carry_a_digest_that_verifies_the_token_but_is_not_it() {
        let token = "0b6f5e3c-4b1d-4a53-9a3e-2f8d1c7e9a10";
        let grant = grant_of("p", token);
        assert_eq!(grant.token_digest.len(), 32);
        let wire = prost::Message::encode_to_vec(&grant);
        assert!(
            !wire.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token itself never travels to a peer"
        );
        let mut peer = SessionTokens::default();
        peer.grant(grant);
        assert_eq!(peer.owner(token), Some("p"), "the peer verifies the token");
        assert_eq!(peer.owner("0b6f5e3c-4b1d-4a53-9a3e-2f8d1c7e9a11"), None);
    }
}
