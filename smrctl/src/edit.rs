//! `smrctl edit KIND/GROUP/NAME`: the object's YAML in `$VISUAL`/`$EDITOR`, applied when saved;
//! a refused edit is opened again with the reason as a comment at the top.

use std::path::Path;
use std::process::Command;

use smr_core::definitions::{self, Object, ObjectKey};

/// The first line of the comment block put above a refused edit.
const ERROR_HEADER: &str = "# smrctl edit: the cluster refused this edit:";
const ERROR_FOOTER: &str =
    "# Fix it and save to apply again; save without changes (or empty the file) to give up.";

/// What the user did with the text.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Saved without a change (or emptied the file): nothing to apply.
    Unchanged,
    /// The edited object, parsed and validated here.
    Edited(Box<Object>),
    /// The text does not parse, or it names another object: the reason.
    Invalid(String),
}

/// The text shown in the editor: the refusal (if any) as comments, then the YAML.
pub fn with_error(yaml: &str, error: Option<&str>) -> String {
    match error {
        None => yaml.to_string(),
        Some(e) => {
            let mut out = String::from(ERROR_HEADER);
            out.push('\n');
            for line in e.lines() {
                out.push_str("#   ");
                out.push_str(line);
                out.push('\n');
            }
            out.push_str(ERROR_FOOTER);
            out.push('\n');
            out.push_str(yaml);
            out
        }
    }
}

/// The text without the comment block [`with_error`] added.
pub fn strip_error(text: &str) -> &str {
    without_error(text)
}

fn without_error(text: &str) -> &str {
    if !text.starts_with(ERROR_HEADER) {
        return text;
    }
    match text.find(ERROR_FOOTER) {
        Some(i) => text[i + ERROR_FOOTER.len()..].trim_start_matches('\n'),
        None => text,
    }
}

/// Reads what the user saved. `shown` is what the editor was given; `key` the object edited.
pub fn judge(shown: &str, saved: &str, key: &ObjectKey, source: &str) -> Outcome {
    let body = without_error(saved);
    if saved == shown || body.trim().is_empty() || body == without_error(shown) {
        return Outcome::Unchanged;
    }
    match definitions::parse_str(source, body) {
        Err(e) => Outcome::Invalid(e.to_string()),
        Ok(mut objects) if objects.len() == 1 => {
            let obj = objects.remove(0);
            if obj.key() != *key {
                Outcome::Invalid(format!(
                    "the edit names {} instead of {key}; edit cannot rename or move an object (apply the new one and delete the old)",
                    obj.key()
                ))
            } else {
                Outcome::Edited(Box::new(obj))
            }
        }
        Ok(objects) => Outcome::Invalid(format!(
            "the edit holds {} definitions; keep exactly the one of {key}",
            objects.len()
        )),
    }
}

/// The editor command: `$VISUAL`, else `$EDITOR`, else `vi`. Split on white space, so
/// `EDITOR="code --wait"` works.
pub fn editor() -> Vec<String> {
    let raw = std::env::var("VISUAL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".into());
    raw.split_whitespace().map(str::to_string).collect()
}

/// Opens `file` in the editor and waits for it to exit.
pub fn run_editor(file: &Path) -> Result<(), String> {
    let cmd = editor();
    let (program, args) = cmd.split_first().ok_or("no editor set ($EDITOR)")?;
    let status = Command::new(program)
        .args(args)
        .arg(file)
        .status()
        .map_err(|e| format!("cannot run the editor {program:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the editor {program:?} exited with {status}; nothing applied"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: c\nspec:\n  data:\n    a: \"1\"\n";

    fn key() -> ObjectKey {
        "configuration/g/c".parse().unwrap()
    }

    #[test]
    fn outcomes() {
        assert_eq!(judge(YAML, YAML, &key(), "e.yaml"), Outcome::Unchanged);
        assert_eq!(judge(YAML, "\n", &key(), "e.yaml"), Outcome::Unchanged);
        let edited = YAML.replace("\"1\"", "\"2\"");
        match judge(YAML, &edited, &key(), "e.yaml") {
            Outcome::Edited(o) => {
                assert_eq!(o.spec.data().unwrap()["a"], "2");
            }
            other => panic!("{other:?}"),
        }
        match judge(YAML, &YAML.replace("name: c", "name: d"), &key(), "e.yaml") {
            Outcome::Invalid(why) => assert!(why.contains("cannot rename"), "{why}"),
            other => panic!("{other:?}"),
        }
        match judge(YAML, &YAML.replace("data:", "dta:"), &key(), "e.yaml") {
            Outcome::Invalid(why) => assert!(why.contains("unknown field spec.dta"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_comments_come_and_go() {
        let shown = with_error(YAML, Some("e.yaml:8:5: bad\nsecond line"));
        assert!(shown.starts_with(
            "# smrctl edit: the cluster refused this edit:\n#   e.yaml:8:5: bad\n#   second line\n# Fix it"
        ));
        assert!(shown.ends_with(YAML));
        // Saving the refused text again unchanged gives up; a fix below the comments applies.
        assert_eq!(judge(&shown, &shown, &key(), "e.yaml"), Outcome::Unchanged);
        let fixed = shown.replace("\"1\"", "\"3\"");
        assert!(matches!(
            judge(&shown, &fixed, &key(), "e.yaml"),
            Outcome::Edited(_)
        ));
        // Comments the user keeps are fine YAML too.
        assert!(matches!(
            judge(
                YAML,
                &format!("# mine\n{}", YAML.replace("\"1\"", "\"4\"")),
                &key(),
                "e.yaml"
            ),
            Outcome::Edited(_)
        ));
    }
}
