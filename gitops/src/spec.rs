//! What to fetch: a repository URL, a revision, a directory inside the repository and the
//! credentials to use. Secrets never leave this module in printable form: `Debug` prints
//! `***` for them, and [`redact_url`] / [`redact_text`] strip `user:password@` from URLs so
//! that error messages can name a repository without leaking its credentials.

use std::fmt;

/// One repository to read definitions from (the inputs of a `gitops` object).
#[derive(Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `https://`, `http://`, `ssh://`, `git://`, scp-like `user@host:path`, or a local path.
    pub url: String,
    /// Branch name, tag name, full or short commit sha; `None` means the remote's HEAD.
    pub revision: Option<String>,
    /// Directory inside the repository holding the definitions; `""` or `"."` is the root.
    pub directory: String,
    /// Credentials presented when the server asks for them.
    pub auth: Auth,
}

impl RepoSpec {
    /// A spec for the remote HEAD at the repository root, without credentials.
    pub fn new(url: impl Into<String>) -> Self {
        RepoSpec {
            url: url.into(),
            revision: None,
            directory: String::new(),
            auth: Auth::None,
        }
    }

    /// The URL with any `user:password@` removed: safe to log and to put in errors.
    pub fn safe_url(&self) -> String {
        redact_url(&self.url)
    }

    #[cfg(feature = "git")]
    /// Every secret this spec carries (for scrubbing third-party error messages).
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.auth {
            Auth::None => {}
            Auth::Basic { password, .. } => out.push(password.clone()),
            Auth::SshKey {
                private_key_pem,
                passphrase,
            } => {
                out.push(private_key_pem.clone());
                if let Some(p) = passphrase {
                    out.push(p.clone());
                }
            }
        }
        if let Some(password) = url_password(&self.url) {
            out.push(password);
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

impl fmt::Debug for RepoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoSpec")
            .field("url", &self.safe_url())
            .field("revision", &self.revision)
            .field("directory", &self.directory)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Credentials for a repository (from `httpAuthRef` or `certKeyRef`).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// Anonymous access.
    #[default]
    None,
    /// HTTP basic authentication (also used for tokens: any username, token as password).
    Basic { username: String, password: String },
    /// An SSH private key (PEM or OpenSSH format) and its optional passphrase. The SSH user
    /// is the one in the URL (`git@host:...`), `git` when the URL names none.
    SshKey {
        private_key_pem: String,
        passphrase: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"***")
                .finish(),
            Auth::SshKey { passphrase, .. } => f
                .debug_struct("SshKey")
                .field("private_key_pem", &"***")
                .field("passphrase", &passphrase.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

/// `scheme://user:password@host/path` -> `scheme://host/path`. URLs without a scheme
/// (scp-like `git@host:path`, local paths) carry no password and are returned unchanged.
pub fn redact_url(url: &str) -> String {
    redact_text(url)
}

/// Removes the user-info part of every `scheme://user[:password]@host` URL found in `text`.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '\'' | '"' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(feature = "git")]
/// The password embedded in a `scheme://user:password@host` URL, if any.
fn url_password(url: &str) -> Option<String> {
    let tail = &url[url.find("://")? + 3..];
    let end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
    let userinfo = &tail[..tail[..end].rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    Some(password.to_string())
}

#[cfg(feature = "git")]
/// `redact_text` plus replacement of every known secret by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = redact_text(text);
    for secret in secrets {
        if !secret.is_empty() {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo() {
        assert_eq!(
            redact_url("https://bob:s3cret@example.com/org/repo.git"),
            "https://example.com/org/repo.git"
        );
        assert_eq!(
            redact_url("https://token@example.com:8443/r"),
            "https://example.com:8443/r"
        );
        assert_eq!(redact_url("ssh://git@host/r.git"), "ssh://host/r.git");
        assert_eq!(
            redact_url("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        assert_eq!(redact_url("/srv/git/r.git"), "/srv/git/r.git");
        assert_eq!(redact_url("http://u:p@w@host/x?y=1"), "http://host/x?y=1");
    }

    #[test]
    fn redacts_inside_messages() {
        assert_eq!(
            redact_text("failed for 'http://a:b@h:1/x' and http://c:d@e"),
            "failed for 'http://h:1/x' and http://e"
        );
    }

    #[test]
    fn url_password_found() {
        assert_eq!(url_password("https://a:b@h/x").as_deref(), Some("b"));
        assert_eq!(url_password("https://a@h/x"), None);
        assert_eq!(url_password("https://h/x@y"), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let spec = RepoSpec {
            url: "https://u:urlpass@h/r".into(),
            revision: Some("main".into()),
            directory: "apps".into(),
            auth: Auth::Basic {
                username: "u".into(),
                password: "hunter2".into(),
            },
        };
        let text = format!("{spec:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("urlpass"), "{text}");
        assert!(text.contains("***"), "{text}");
        let ssh = Auth::SshKey {
            private_key_pem: "-----BEGIN KEY-----abc".into(),
            passphrase: Some("pp".into()),
        };
        assert_eq!(
            format!("{ssh:?}"),
            r#"SshKey { private_key_pem: "***", passphrase: Some("***") }"#
        );
    }

    #[test]
    fn scrub_replaces_secrets() {
        assert_eq!(
            scrub(
                "bad password hunter2 at https://u:hunter2@h/",
                &["hunter2".into()]
            ),
            "bad password *** at https://h/"
        );
    }
}
