//! The one error type of the definitions module: where (file, line, column, field path),
//! what (kind and message) and, for misspelt names, the near match.

use std::fmt;

/// What went wrong, for callers that branch on it (HTTP status, CLI exit code, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file or directory could not be read.
    Io,
    /// The input is larger than [`super::MAX_INPUT_BYTES`].
    TooLarge,
    /// The text is not well-formed YAML.
    Syntax,
    /// The parser's resource budget tripped (alias bombs, huge or deeply nested documents).
    Budget,
    /// A key that the field's type does not have.
    UnknownField,
    /// A required key is absent.
    MissingField,
    /// A value of the wrong type (a list where a string belongs, ...).
    InvalidType,
    /// A value of the right type that is not allowed (an unknown enum value, a bad duration, ...).
    InvalidValue,
    /// The object parsed but breaks a rule (name not a DNS label, port out of range, ...).
    Invalid,
    /// A pack folder is malformed (no `definitions/` folder, bad `Pack.yaml`).
    Pack,
}

/// A definition error: `app.yaml:7:5: unknown field meta.label, did you mean labels?`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    /// The file (or other source name) the text came from.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// Dotted field path such as `spec.readiness[0].timeout`; empty for whole-document errors.
    pub path: String,
    pub kind: ErrorKind,
    /// What is wrong, without the location and path.
    pub message: String,
    /// The near match of a misspelt name.
    pub suggestion: Option<String>,
}

impl DefinitionError {
    pub(crate) fn new(
        kind: ErrorKind,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DefinitionError {
            file: String::new(),
            line: 0,
            column: 0,
            path: path.into(),
            kind,
            message: message.into(),
            suggestion: None,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, path, message)
    }

    pub(crate) fn with_file(mut self, file: &str) -> Self {
        if self.file.is_empty() {
            self.file = file.to_string();
        }
        self
    }

    pub(crate) fn at(mut self, line: u64, column: u64) -> Self {
        self.line = line;
        self.column = column;
        self
    }
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = if self.file.is_empty() {
            "<input>"
        } else {
            &self.file
        };
        if self.line > 0 && self.column == 0 {
            write!(f, "{file}:{}: ", self.line)?;
        } else if self.line > 0 {
            write!(f, "{file}:{}:{}: ", self.line, self.column)?;
        } else {
            write!(f, "{file}: ")?;
        }
        match (self.kind, self.path.is_empty()) {
            (ErrorKind::UnknownField, false) => {
                write!(f, "unknown field {}", self.path)?;
                if self.suggestion.is_none() && !self.message.is_empty() {
                    write!(f, " ({})", self.message)?;
                }
            }
            (_, false) => write!(f, "{}: {}", self.path, self.message)?,
            (_, true) => f.write_str(&self.message)?,
        }
        if let Some(s) = &self.suggestion {
            write!(f, ", did you mean {s}?")?;
        }
        Ok(())
    }
}

/// Levenshtein distance over chars, compared case-insensitively.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate nearest to `word`, if it is near enough to be a plausible typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}
