//! Browser sessions: a random id in an HttpOnly, SameSite=Strict cookie,
//! mapped here (and only here, in the console's memory) to the operator's
//! admin session on the cluster.
//!
//! The browser never sees the cluster's session token: a stolen page or a
//! script injected into it has nothing to replay against the cluster, and
//! the console forgets every session when it stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use agora_peer::ClusterClient;
use base64::Engine as _;
use rand::RngCore as _;

/// The cookie's name.
pub const COOKIE_NAME: &str = "agora_console";
/// Random bytes in a session id (256 bits: not guessable).
const SESSION_ID_BYTES: usize = 32;
/// At most this many browser sessions at once; signing in beyond it drops
/// the oldest (one operator console, not a public site).
pub const MAX_SESSIONS: usize = 64;

/// One signed-in browser.
#[derive(Debug)]
pub struct WebSession {
    /// The admin's canonical name.
    pub username: String,
    /// The cluster session's token, to end it when the operator signs out.
    pub token: String,
    /// When the cluster session ends (Unix ms); the cookie goes with it.
    pub expires_at_ms: u64,
    /// The console's cluster client carrying this admin's session (and
    /// never the operator certificate): every call made for this browser
    /// is authorized by the admin who signed in, or refused.
    pub client: ClusterClient,
    /// When it was made (Unix ms), to drop the oldest first.
    created_at_ms: u64,
}

impl WebSession {
    /// A session for `username`, acting through `client`.
    #[must_use]
    pub fn new(username: String, token: String, expires_at_ms: u64, client: ClusterClient) -> Self {
        Self {
            username,
            token,
            expires_at_ms,
            client,
            created_at_ms: agora_peer::account::now_ms(),
        }
    }
}

/// Every signed-in browser, by session id.
#[derive(Debug, Default)]
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<WebSession>>>,
}

impl SessionStore {
    /// Keeps `session`; returns its new id (for the cookie).
    pub fn insert(&self, session: WebSession) -> String {
        let mut bytes = [0u8; SESSION_ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = agora_peer::account::now_ms();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires_at_ms > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.created_at_ms)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => sessions.remove(&oldest),
                None => break,
            };
        }
        sessions.insert(id.clone(), Arc::new(session));
        id
    }

    /// The live session with this id; an expired one is forgotten.
    pub fn get(&self, id: &str) -> Option<Arc<WebSession>> {
        let mut sessions = self.lock();
        let session = sessions.get(id)?.clone();
        if session.expires_at_ms <= agora_peer::account::now_ms() {
            sessions.remove(id);
            return None;
        }
        Some(session)
    }

    /// Forgets a session; returns it if it existed.
    pub fn remove(&self, id: &str) -> Option<Arc<WebSession>> {
        self.lock().remove(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<WebSession>>> {
        // The map is never left half-updated.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The session id in a `Cookie` header, if the browser sent ours.
#[must_use]
pub fn session_id_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that hands `id` to the browser for `max_age_secs`:
/// HttpOnly (no script reads it), SameSite=Strict (no other site's page
/// sends it), whole site.
#[must_use]
pub fn session_cookie(id: &str, max_age_secs: u64) -> String {
    format!("{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

/// The `Set-Cookie` value that makes the browser forget the session.
#[must_use]
pub fn cleared_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_cookie_among_others() {
        assert_eq!(
            session_id_from_cookies("theme=dark; agora_console=abc-_1; x=y"),
            Some("abc-_1")
        );
        assert_eq!(session_id_from_cookies("agora_console="), None);
        assert_eq!(session_id_from_cookies("other=1"), None);
        assert_eq!(session_id_from_cookies("agora_consolex=1"), None);
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let cookie = session_cookie("id", 60);
        assert!(cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Strict"));
        assert!(cookie.contains("Max-Age=60"));
        assert!(cleared_cookie().contains("Max-Age=0"));
    }
}
