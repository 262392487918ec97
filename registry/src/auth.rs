//! Who may do what: HTTP basic authentication, as Confluent's clients send it
//! (`basic.auth.user.info = user:password`, or credentials in the registry URL), and three
//! roles.
//!
//! | role | may |
//! | --- | --- |
//! | `reader` | read: `GET` anything, lookups (`POST /subjects/{s}`), compatibility checks |
//! | `writer` | also register schemas (`POST /subjects/{s}/versions`) |
//! | `admin` | also delete subjects and versions, and change config and mode |
//!
//! Reads are open to anyone unless the registry is told otherwise (`--auth-reads`). With no
//! users configured, the registry is open to all, and says so at start.
//!
//! The users file has one user per line, `name:role:sha256-of-password` (hex), `#` comments;
//! passwords are compared as their sha256 digests, in constant time. The file is re-read
//! when it changes ([`watch`]): a user removed is refused from then on, without a restart; a
//! file that does not parse, or names no user (which would open the registry), is refused and
//! the users loaded stay.

use warp::http::{HeaderMap, Method};

use crate::error::ApiError;

/// A user's role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Self::Reader),
            "writer" => Ok(Self::Writer),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (reader, writer or admin)")),
        }
    }
}

#[derive(Clone)]
struct User {
    name: String,
    password_sha256: [u8; 32],
    role: Role,
}

/// The registry's users and whether reads need one.
#[derive(Clone, Default)]
pub struct Auth {
    users: Vec<User>,
    authenticated_reads: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users.iter().map(|u| (&u.name, u.role)).collect::<Vec<_>>())
            .field("authenticated_reads", &self.authenticated_reads)
            .finish()
    }
}

/// The sha256 of a password, in hex, as the users file holds it.
pub fn password_sha256(password: &str) -> String {
    streamscore_contracts::sha256_hex(password.as_bytes())
}

impl Auth {
    /// No users: everything is open.
    pub fn open() -> Self {
        Self::default()
    }

    /// Whether any user is configured (else the registry is open).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Reads need a user too.
    #[must_use]
    pub fn with_authenticated_reads(mut self, on: bool) -> Self {
        self.authenticated_reads = on;
        self
    }

    /// Parses a users file, saying which line is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(':').collect();
            let [name, role, hash] = fields.as_slice() else {
                return Err(format!("line {}: expected name:role:sha256-of-password", n + 1));
            };
            if name.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            let role: Role = role.parse().map_err(|e| format!("line {}: {e}", n + 1))?;
            let password_sha256 = streamscore_contracts::sha256_from_hex(hash)
                .ok_or_else(|| format!("line {}: the password's sha256 is not 64 hex digits", n + 1))?;
            users.push(User { name: (*name).to_owned(), password_sha256, role });
        }
        Ok(Self { users, authenticated_reads: false })
    }

    /// Parses a users file re-read while serving: as [`Auth::parse`], and it must name a user
    /// (none would open the registry to all).
    pub fn reparse(text: &str, authenticated_reads: bool) -> Result<Self, String> {
        let auth = Self::parse(text)?.with_authenticated_reads(authenticated_reads);
        if !auth.enabled() {
            return Err("the users file names no user; an empty file would open the registry to all".into());
        }
        Ok(auth)
    }

    /// The role a request needs, by method and path.
    pub fn needed(method: &Method, path: &[&str]) -> Role {
        match (method.as_str(), path) {
            ("GET" | "HEAD", _) => Role::Reader,
            // Lookups and compatibility checks change nothing.
            ("POST", ["subjects", _] | ["compatibility", ..]) => Role::Reader,
            ("POST", ["subjects", _, "versions"]) => Role::Writer,
            // Deletes, config and mode changes, and anything else that writes.
            _ => Role::Admin,
        }
    }

    /// Checks a request's credentials for `needed`: 401 without valid ones, 403 for a role
    /// too low.
    pub fn check(&self, headers: &HeaderMap, needed: Role) -> Result<(), ApiError> {
        if !self.enabled() || (needed == Role::Reader && !self.authenticated_reads) {
            return Ok(());
        }
        let Some((name, password)) = basic_credentials(headers) else {
            return Err(ApiError::unauthorized("credentials are required (HTTP basic authentication)"));
        };
        let digest = streamscore_contracts::sha256(password.as_bytes());
        let mut found: Option<&User> = None;
        for user in &self.users {
            let name_matches = user.name == name;
            if streamscore_contracts::digests_equal(&digest, &user.password_sha256) && name_matches {
                found = Some(user);
            }
        }
        let user = found.ok_or_else(|| ApiError::unauthorized("unknown user or wrong password"))?;
        if user.role < needed {
            return Err(ApiError::forbidden(&user.name, needed));
        }
        Ok(())
    }
}

/// `Authorization: Basic base64(name:password)`.
/// Re-reads the users file at `path` every `every` (until aborted): a change that parses and
/// names a user replaces the users in `current`; one that does not is refused (logged) and the
/// loaded users stay. Reloads are counted in `streamscore_registry_reloads_total{outcome}` and
/// handed to `report`.
pub fn watch(
    path: std::path::PathBuf,
    loaded_sha256: String,
    authenticated_reads: bool,
    current: std::sync::Arc<streamscore_tls::Current<Auth>>,
    every: std::time::Duration,
    report: impl Fn(&streamscore_tls::Reload) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    streamscore_tls::files::watch(
        "registry users",
        vec![path],
        loaded_sha256,
        current,
        move |contents: &[Vec<u8>]| {
            let text = std::str::from_utf8(&contents[0]).map_err(|e| format!("not UTF-8: {e}"))?;
            Auth::reparse(text, authenticated_reads)
        },
        every,
        move |reload: &streamscore_tls::Reload| {
            count_reload(reload);
            report(reload);
        },
    )
}

/// Counts a reload of the registry's files in `streamscore_registry_reloads_total{what, outcome}`.
pub fn count_reload(reload: &streamscore_tls::Reload) {
    metrics::counter!(
        "streamscore_registry_reloads_total",
        "what" => reload.what(),
        "outcome" => if reload.loaded() { "loaded" } else { "refused" },
    )
    .increment(1);
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(warp::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// Standard base64 with padding (what HTTP basic authentication uses).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 != 0 || text.len() - bytes.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0_u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(user_info: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(info) = user_info {
            let encoded = match info {
                "admin:s3cret" => "YWRtaW46czNjcmV0",
                "writer:w" => "d3JpdGVyOnc=",
                "admin:wrong" => "YWRtaW46d3Jvbmc=",
                other => panic!("no encoding for {other}"),
            };
            headers.insert("authorization", format!("Basic {encoded}").parse().expect("header"));
        }
        headers
    }

    fn auth() -> Auth {
        Auth::parse(&format!(
            "# users\nadmin:admin:{}\nwriter:writer:{}\n",
            password_sha256("s3cret"),
            password_sha256("w")
        ))
        .expect("users")
    }

    #[test]
    fn base64_decodes_what_basic_auth_sends() {
        assert_eq!(base64_decode("YWRtaW46czNjcmV0").as_deref(), Some(&b"admin:s3cret"[..]));
        assert_eq!(base64_decode("d3JpdGVyOnc=").as_deref(), Some(&b"writer:w"[..]));
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("!!!!"), None);
    }

    #[test]
    fn roles_gate_what_they_should() {
        let auth = auth();
        let get = Auth::needed(&Method::GET, &["subjects"]);
        let register = Auth::needed(&Method::POST, &["subjects", "s", "versions"]);
        let delete = Auth::needed(&Method::DELETE, &["subjects", "s"]);
        let config = Auth::needed(&Method::PUT, &["config"]);
        assert_eq!((get, register, delete, config), (Role::Reader, Role::Writer, Role::Admin, Role::Admin));
        assert!(auth.check(&headers(None), get).is_ok(), "reads are open by default");
        assert_eq!(auth.check(&headers(None), register).expect_err("anonymous").error_code, 40101);
        assert_eq!(auth.check(&headers(Some("admin:wrong")), register).expect_err("bad password").error_code, 40101);
        assert!(auth.check(&headers(Some("writer:w")), register).is_ok());
        assert_eq!(auth.check(&headers(Some("writer:w")), delete).expect_err("not admin").error_code, 40301);
        assert!(auth.check(&headers(Some("admin:s3cret")), config).is_ok());
        let closed = auth.with_authenticated_reads(true);
        assert_eq!(closed.check(&headers(None), get).expect_err("reads closed").error_code, 40101);
        assert!(closed.check(&headers(Some("writer:w")), get).is_ok());
    }

    #[test]
    fn no_users_means_open_and_bad_files_say_which_line() {
        assert!(Auth::open().check(&headers(None), Role::Admin).is_ok());
        assert!(Auth::parse("admin:root:00").expect_err("role").contains("line 1"));
        assert!(Auth::parse("\nadmin:admin:00").expect_err("hash").contains("line 2"));
        assert!(Auth::parse("admin:admin").expect_err("fields").contains("name:role"));
    }
}
