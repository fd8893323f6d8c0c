//! Credentials: the `Secret` type, one user's entry (inline or in a users
//! file), and the table of users a server or the agent's listeners accept.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, Source, locate, read, yaml_error};
use crate::proto::auth;

/// A password or digest: never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    /// The text itself, for hashing and constant-time comparison.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One user: a name and either the password or its stored digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawUser")]
pub(crate) struct User {
    pub name: String,
    /// `base64(sha256(password))`, what the auth hash is built on.
    pub digest: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    password_hash: Option<Secret>,
}

impl TryFrom<RawUser> for User {
    type Error = String;
    fn try_from(r: RawUser) -> Result<Self, String> {
        if r.name.is_empty() || r.name.contains(':') || r.name.chars().any(char::is_control) {
            return Err(format!(
                "user name `{}` must be non-empty, without `:` or control characters",
                r.name.escape_default()
            ));
        }
        let digest = digest_of(
            &format!("user `{}`", r.name),
            r.password.as_ref(),
            r.password_hash.as_ref(),
        )?;
        Ok(User {
            name: r.name,
            digest,
        })
    }
}

/// The stored digest from exactly one of `password` (the real password)
/// and `password_hash` (what `hash-password` prints); `who` names the entry
/// in errors. Users and the agent's servers share this rule.
pub(super) fn digest_of(
    who: &str,
    password: Option<&Secret>,
    hash: Option<&Secret>,
) -> Result<Secret, String> {
    match (password, hash) {
        (Some(p), None) if !p.0.is_empty() => Ok(Secret(auth::stored_digest(p.0.as_bytes()))),
        (Some(_), None) => Err(format!("{who}: password is empty")),
        (None, Some(h)) if is_digest(h.0.trim()) => Ok(Secret(h.0.trim().to_string())),
        (None, Some(_)) => Err(format!(
            "{who}: password_hash must be the 44-character output of `websocks hash-password`"
        )),
        (Some(_), Some(_)) => Err(format!("{who}: give password or password_hash, not both")),
        (None, None) => Err(format!("{who}: password or password_hash is required")),
    }
}

/// Is `s` base64 of 32 bytes, as `hash-password` prints?
fn is_digest(s: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .is_ok_and(|b| b.len() == 32)
}

/// The users a server (or the agent's listeners) accept, by name, as
/// stored digests.
#[derive(Clone, Default)]
pub(crate) struct Users {
    by_name: HashMap<String, Secret>,
}

impl Users {
    /// The stored digest of `user`, if there is such a user.
    pub(crate) fn get(&self, user: &str) -> Option<&Secret> {
        self.by_name.get(user)
    }

    /// The names, in no order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `user` still exists with this stored digest: a grant made
    /// under an older configuration holds only while this is true.
    pub(crate) fn grants(&self, user: &str, digest: &Secret) -> bool {
        self.get(user) == Some(digest)
    }

    /// Whether `user` with the plain password `pass` is one of these
    /// (local proxy and metrics authentication), compared in constant
    /// time; an unknown user costs the same hashing.
    pub(crate) fn accepts(&self, user: &[u8], pass: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let digest = auth::stored_digest(pass);
        let want = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.get(u))
            .map(|s| s.expose());
        let ok: bool = digest
            .as_bytes()
            .ct_eq(want.unwrap_or("-").as_bytes())
            .into();
        ok && want.is_some()
    }

    /// Adds `user`; false when the name was already taken.
    pub(super) fn insert(&mut self, user: &User) -> bool {
        self.by_name
            .insert(user.name.clone(), user.digest.clone())
            .is_none()
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Users({} entries)", self.len())
    }
}

/// Reads a users file: a YAML list of `{name, password | password_hash}`.
pub(crate) fn load_users_file(path: &Path) -> Result<(Vec<User>, String), ConfigError> {
    let text = read(path)?;
    // A file of comments only (as the package ships it) lists no one yet.
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Ok((Vec::new(), text));
    }
    let users = serde_yaml::from_str::<Vec<User>>(&text).map_err(|e| yaml_error(path, &e))?;
    Ok((users, text))
}

/// Whether `text` has the shape of a users file: a YAML list whose entries
/// are maps with a `name`. A configuration's top level is a map, so `check`
/// can tell an operator who passed the users file instead.
pub(crate) fn looks_like_users_file(text: &str) -> bool {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Sequence(entries)) => entries
            .iter()
            .all(|e| e.as_mapping().is_some_and(|m| m.contains_key("name"))),
        _ => false,
    }
}

/// The line of the `nth` (0-based) `name: <name>` entry in YAML text.
fn name_line(text: &str, name: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start().trim_start_matches("- ").trim_start();
            l.strip_prefix("name:")
                .map(|v| {
                    v.split(" #")
                        .next()
                        .unwrap_or("")
                        .trim()
                        .trim_matches(['"', '\''])
                        == name
                })
                .unwrap_or(false)
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// The server's users file and its text; unreadable, the error points at
/// the key that names it.
fn users_file(f: &Path, src: &Source) -> Result<(Vec<User>, String), ConfigError> {
    load_users_file(f).map_err(|e| match e.line {
        None => ConfigError {
            file: src.path.to_path_buf(),
            line: locate(src.text, "server.users_file"),
            key: "server.users_file".into(),
            msg: format!(
                "cannot read {}: {}",
                f.display(),
                e.msg.trim_start_matches("cannot read: ")
            ),
        },
        Some(_) => e,
    })
}

/// Merges the server's inline users and its users file (`file`, as
/// resolved) into one table; names must be unique across both.
pub(super) fn server_users(
    inline: &[User],
    file: Option<&Path>,
    src: &Source,
) -> Result<Users, ConfigError> {
    let (from_file, file_text) = match file {
        Some(f) => users_file(f, src)?,
        None => (Vec::new(), String::new()),
    };
    let mut users = Users::default();
    let mut seen_in_cfg: HashMap<&str, usize> = HashMap::new();
    let entries = inline
        .iter()
        .enumerate()
        .map(|(i, u)| (u, i, true))
        .chain(from_file.iter().enumerate().map(|(i, u)| (u, i, false)));
    for (u, i, in_cfg) in entries {
        let n = if in_cfg {
            let c = seen_in_cfg.entry(&u.name).or_default();
            *c += 1;
            *c - 1
        } else {
            0
        };
        if !users.insert(u) {
            let (fpath, text, key, nth) = match (in_cfg, file) {
                (false, Some(f)) => {
                    let nth = from_file[..i].iter().filter(|o| o.name == u.name).count();
                    (f, file_text.as_str(), format!("[{i}].name"), nth)
                }
                _ => (src.path, src.text, format!("server.users[{i}].name"), n),
            };
            return Err(ConfigError {
                file: fpath.to_path_buf(),
                line: name_line(text, &u.name, nth),
                key,
                msg: format!("user `{}` is defined twice", u.name),
            });
        }
    }
    if users.is_empty() {
        let msg = match file {
            Some(f) => format!(
                "no users yet: add one to {} (`websocks hash-password` prints its password_hash); websocks never runs an open proxy",
                f.display()
            ),
            None => {
                "no users: add `users:` or `users_file:` (websocks never runs an open proxy)".into()
            }
        };
        // The section, not the key: `users:` may be absent.
        return Err(ConfigError {
            file: src.path.to_path_buf(),
            line: locate(src.text, "server"),
            key: "server.users".into(),
            msg,
        });
    }
    Ok(users)
}
