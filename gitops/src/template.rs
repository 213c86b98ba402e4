//! The part of Go's `text/template` that simplecontainer's packs use, with the functions
//! simplecontainer's pack reader registers (its own set, not sprig: `replace` takes four
//! arguments, `contains`/`hasPrefix`/`trimSuffix`... take the string first, as Go's `strings`
//! functions do). Pure: text and variables in, text out.
//!
//! Understood: `{{ PIPELINE }}`, `{{- `/` -}}` trimming, `{{/* comments */}}`, `if`/`else if`/
//! `else`/`end`, `range` (a list, or a mapping's values in key order) and `with`, each with an
//! optional `else`; pipelines `a | f x`, parenthesised pipelines, string (`"..."`, `` `...` ``),
//! number and boolean literals, `.` and `$` (the root) with keys (`.a.b`, `$.a`). Anything else
//! (variables `$x :=`, `define`/`template`/`block`, `break`/`continue`, other functions) is
//! refused naming it.

use std::collections::{BTreeMap, BTreeSet};

use crate::pack::{VARIABLES_FILE, Value};

/// The functions templates may call.
pub const FUNCTIONS: &[&str] = &[
    "and",
    "b64dec",
    "b64enc",
    "base64decode",
    "base64encode",
    "contains",
    "default",
    "empty",
    "eq",
    "ge",
    "gt",
    "hasPrefix",
    "hasSuffix",
    "indent",
    "le",
    "len",
    "lower",
    "lt",
    "ne",
    "nindent",
    "not",
    "or",
    "quote",
    "replace",
    "replaceAll",
    "squote",
    "ternary",
    "title",
    "toString",
    "trim",
    "trimPrefix",
    "trimSuffix",
    "upper",
];

/// A template error: the 1-based line and what is wrong.
pub(crate) type Failure = (u64, String);

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// `.a.b` (empty: `.`).
    Dot(Vec<String>),
    /// `$.a.b` (empty: `$`).
    Root(Vec<String>),
    Lit(Value),
    Func(String),
    Sub(Pipe),
}

type Command = Vec<Operand>;
type Pipe = Vec<Command>;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Print(u64, Pipe),
    If(u64, Vec<(Pipe, Vec<Node>)>, Vec<Node>),
    Range(u64, Pipe, Vec<Node>, Vec<Node>),
    With(u64, Pipe, Vec<Node>, Vec<Node>),
}

/// One `{{ }}` or the text between two.
enum Piece {
    Text(String),
    Action(u64, String),
}

fn split(text: &str) -> Result<Vec<Piece>, Failure> {
    let mut out = Vec::new();
    let mut rest = text;
    let line_of = |at: &str| -> u64 {
        let consumed = text.len() - at.len();
        text[..consumed].matches('\n').count() as u64 + 1
    };
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let line = line_of(&rest[start..]);
        let mut before = &rest[..start];
        if trim_next {
            before = before.trim_start();
        }
        let after_open = &rest[start + 2..];
        let Some(end) = after_open.find("}}") else {
            return Err((line, "`{{` is not closed by `}}`".into()));
        };
        let mut action = &after_open[..end];
        trim_next = false;
        if let Some(a) = action.strip_prefix('-')
            && a.starts_with(char::is_whitespace)
        {
            before = before.trim_end();
            action = a;
        }
        if let Some(a) = action.strip_suffix('-')
            && a.ends_with(char::is_whitespace)
        {
            trim_next = true;
            action = a;
        }
        if !before.is_empty() {
            out.push(Piece::Text(before.to_string()));
        }
        let action = action.trim();
        if !(action.starts_with("/*") && action.ends_with("*/")) {
            out.push(Piece::Action(line, action.to_string()));
        }
        rest = &after_open[end + 2..];
    }
    let rest = if trim_next { rest.trim_start() } else { rest };
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    End(u64),
    Else(u64, Option<Pipe>),
}

fn keyword(action: &str) -> (&str, &str) {
    let word_end = action
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(action.len());
    (&action[..word_end], action[word_end..].trim())
}

fn parse_nodes(
    pieces: &mut std::iter::Peekable<std::vec::IntoIter<Piece>>,
) -> Result<(Vec<Node>, Stop), Failure> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.next() {
        let (line, action) = match piece {
            Piece::Text(t) => {
                nodes.push(Node::Text(t));
                continue;
            }
            Piece::Action(line, a) => (line, a),
        };
        let (word, rest) = keyword(&action);
        match word {
            "end" if rest.is_empty() => return Ok((nodes, Stop::End(line))),
            "else" if rest.is_empty() => return Ok((nodes, Stop::Else(line, None))),
            "else" => {
                let (w, cond) = keyword(rest);
                if w != "if" {
                    return Err((
                        line,
                        format!("`{{{{ {action} }}}}`: only `else` and `else if` are supported"),
                    ));
                }
                return Ok((nodes, Stop::Else(line, Some(parse_pipe(line, cond)?))));
            }
            "if" => {
                let mut branches = vec![(parse_pipe(line, rest)?, Vec::new())];
                let otherwise = loop {
                    let (body, end) = parse_nodes(pieces)?;
                    branches.last_mut().expect("one branch at least").1 = body;
                    match end {
                        Stop::End(_) => break Vec::new(),
                        Stop::Else(_, Some(cond)) => branches.push((cond, Vec::new())),
                        Stop::Else(l, None) => {
                            let (body, end) = parse_nodes(pieces)?;
                            match end {
                                Stop::End(_) => break body,
                                _ => {
                                    return Err((
                                        l,
                                        "`{{ else }}` is not followed by `{{ end }}`".into(),
                                    ));
                                }
                            }
                        }
                        Stop::Eof => return Err((line, "`{{ if }}` has no `{{ end }}`".into())),
                    }
                };
                nodes.push(Node::If(line, branches, otherwise));
            }
            "range" | "with" => {
                if rest.starts_with('$') && rest.contains(":=") {
                    return Err((
                        line,
                        format!(
                            "`{{{{ {action} }}}}`: template variables (`$x :=`) are not supported in pack templates; use `.`"
                        ),
                    ));
                }
                let pipe = parse_pipe(line, rest)?;
                let (body, end) = parse_nodes(pieces)?;
                let otherwise = match end {
                    Stop::End(_) => Vec::new(),
                    Stop::Else(l, None) => match parse_nodes(pieces)? {
                        (other, Stop::End(_)) => other,
                        _ => return Err((l, "`{{ else }}` is not followed by `{{ end }}`".into())),
                    },
                    Stop::Else(l, Some(_)) => {
                        return Err((l, format!("`{{{{ else if }}}}` inside `{{{{ {word} }}}}`")));
                    }
                    Stop::Eof => {
                        return Err((line, format!("`{{{{ {word} }}}}` has no `{{{{ end }}}}`")));
                    }
                };
                nodes.push(if word == "range" {
                    Node::Range(line, pipe, body, otherwise)
                } else {
                    Node::With(line, pipe, body, otherwise)
                });
            }
            "define" | "template" | "block" | "break" | "continue" | "end" => {
                return Err((
                    line,
                    format!("`{{{{ {action} }}}}`: `{word}` is not supported in pack templates"),
                ));
            }
            _ => nodes.push(Node::Print(line, parse_pipe(line, &action)?)),
        }
    }
    Ok((nodes, Stop::Eof))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot(Vec<String>),
    Root(Vec<String>),
    Lit(Value),
    Ident(String),
    Bar,
    Open,
    Close,
}

fn path_after(chars: &[char], mut i: usize) -> Result<(Vec<String>, usize), String> {
    let mut path = Vec::new();
    while i < chars.len() && chars[i] == '.' {
        let start = i + 1;
        let mut j = start;
        while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '-')
        {
            j += 1;
        }
        if j == start {
            if path.is_empty() && (j == chars.len() || !chars[j].is_alphanumeric()) {
                // A lone `.` (or `$.`... which Go refuses too).
                return Ok((path, j));
            }
            return Err("a key is missing after `.`".into());
        }
        path.push(chars[start..j].iter().collect());
        i = j;
    }
    Ok((path, i))
}

fn lex(action: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = action.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '|' => {
                out.push(Tok::Bar);
                i += 1;
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '.' => {
                let (path, next) = path_after(&chars, i)?;
                out.push(Tok::Dot(path));
                i = next;
            }
            '$' => {
                if chars
                    .get(i + 1)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    return Err(
                        "template variables (`$x`) are not supported in pack templates; use `.` or `$`"
                            .into(),
                    );
                }
                let (path, next) = path_after(&chars, i + 1)?;
                out.push(Tok::Root(path));
                i = next;
            }
            '"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None | Some('\n') => return Err("a string is not closed".into()),
                        Some('"') => break,
                        Some('\\') => {
                            let e = chars.get(j + 1).ok_or("a string is not closed")?;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                '\'' => '\'',
                                '0' => '\0',
                                other => {
                                    return Err(format!(
                                        "escape `\\{other}` in a string is not supported"
                                    ));
                                }
                            });
                            j += 2;
                        }
                        Some(c) => {
                            s.push(*c);
                            j += 1;
                        }
                    }
                }
                out.push(Tok::Lit(Value::Text(s)));
                i = j + 1;
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '`')
                    .ok_or("a raw string is not closed")?;
                out.push(Tok::Lit(Value::Text(
                    chars[i + 1..i + 1 + end].iter().collect(),
                )));
                i += end + 2;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                if text.parse::<i64>().is_err() && text.parse::<f64>().is_err() {
                    return Err(format!("{text:?} is not a number"));
                }
                out.push(Tok::Lit(Value::Number(text)));
                i = j;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                out.push(match word.as_str() {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "nil" => return Err("`nil` is not supported in pack templates".into()),
                    _ => Tok::Ident(word),
                });
                i = j;
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(out)
}

fn parse_pipe(line: u64, action: &str) -> Result<Pipe, Failure> {
    let wrap = |m: String| (line, format!("`{{{{ {action} }}}}`: {m}"));
    let toks = lex(action).map_err(wrap)?;
    let mut at = 0;
    let pipe = pipe_of(&toks, &mut at).map_err(wrap)?;
    if at != toks.len() {
        return Err(wrap("unexpected `)`".into()));
    }
    Ok(pipe)
}

fn pipe_of(toks: &[Tok], at: &mut usize) -> Result<Pipe, String> {
    let mut pipe = Vec::new();
    let mut cmd: Command = Vec::new();
    while let Some(t) = toks.get(*at) {
        *at += 1;
        match t {
            Tok::Bar => {
                if cmd.is_empty() {
                    return Err("missing command before `|`".into());
                }
                pipe.push(std::mem::take(&mut cmd));
            }
            Tok::Close => {
                *at -= 1;
                break;
            }
            Tok::Open => {
                let sub = pipe_of(toks, at)?;
                if toks.get(*at) != Some(&Tok::Close) {
                    return Err("`(` is not closed".into());
                }
                *at += 1;
                cmd.push(Operand::Sub(sub));
            }
            Tok::Dot(p) => cmd.push(Operand::Dot(p.clone())),
            Tok::Root(p) => cmd.push(Operand::Root(p.clone())),
            Tok::Lit(v) => cmd.push(Operand::Lit(v.clone())),
            Tok::Ident(name) => {
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err(format!(
                        "function {name:?} is not supported in pack templates (supported: {})",
                        FUNCTIONS.join(", ")
                    ));
                }
                cmd.push(Operand::Func(name.clone()));
            }
        }
    }
    if cmd.is_empty() {
        return Err("missing value".into());
    }
    pipe.push(cmd);
    for c in &pipe[1..] {
        if !matches!(c[0], Operand::Func(_)) {
            return Err("only a function can follow `|`".into());
        }
    }
    Ok(pipe)
}

struct Scope<'a> {
    root: &'a Value,
    dot: Value,
    at_root: bool,
}

struct Run<'a> {
    used: &'a mut BTreeSet<String>,
    line: u64,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Text(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::List(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

/// Go's truth: false, 0, and empty strings, lists and mappings are false.
fn truth(v: &Value) -> bool {
    match v {
        Value::Text(s) => !s.is_empty(),
        Value::Number(n) => n.parse::<f64>().is_ok_and(|f| f != 0.0),
        Value::Bool(b) => *b,
        Value::List(l) => !l.is_empty(),
        Value::Map(m) => !m.is_empty(),
    }
}

/// Go's `%v`.
fn show(v: &Value) -> String {
    match v {
        Value::Text(s) | Value::Number(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::List(l) => format!("[{}]", l.iter().map(show).collect::<Vec<_>>().join(" ")),
        Value::Map(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", show(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

impl Run<'_> {
    fn nodes(&mut self, nodes: &[Node], scope: &Scope, out: &mut String) -> Result<(), Failure> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Print(line, pipe) => {
                    self.line = *line;
                    match self.pipe(pipe, scope)? {
                        Value::Map(_) => {
                            return Err((
                                *line,
                                format!(
                                    "{} is a mapping; name one of its keys (`{{{{ .{}.KEY }}}}`)",
                                    describe(pipe),
                                    dotted(pipe)
                                ),
                            ));
                        }
                        Value::List(_) => {
                            return Err((
                                *line,
                                format!(
                                    "{} is a list; only single values can be put in a template (or `range` over it)",
                                    describe(pipe)
                                ),
                            ));
                        }
                        v => out.push_str(&show(&v)),
                    }
                }
                Node::If(line, branches, otherwise) => {
                    self.line = *line;
                    let mut taken = None;
                    for (cond, body) in branches {
                        if truth(&self.pipe(cond, scope)?) {
                            taken = Some(body);
                            break;
                        }
                    }
                    self.nodes(taken.unwrap_or(otherwise), scope, out)?;
                }
                Node::With(line, pipe, body, otherwise) => {
                    self.line = *line;
                    let v = self.pipe(pipe, scope)?;
                    if truth(&v) {
                        let inner = Scope {
                            root: scope.root,
                            dot: v,
                            at_root: false,
                        };
                        self.nodes(body, &inner, out)?;
                    } else {
                        self.nodes(otherwise, scope, out)?;
                    }
                }
                Node::Range(line, pipe, body, otherwise) => {
                    self.line = *line;
                    let items: Vec<Value> = match self.pipe(pipe, scope)? {
                        Value::List(l) => l,
                        Value::Map(m) => m.into_values().collect(),
                        // A YAML null (`items:`), which Go ranges over as nothing.
                        Value::Text(t) if t.is_empty() => Vec::new(),
                        other => {
                            return Err((
                                *line,
                                format!(
                                    "range can't iterate over {} ({})",
                                    type_name(&other),
                                    show(&other)
                                ),
                            ));
                        }
                    };
                    if items.is_empty() {
                        self.nodes(otherwise, scope, out)?;
                    }
                    for item in items {
                        let inner = Scope {
                            root: scope.root,
                            dot: item,
                            at_root: false,
                        };
                        self.nodes(body, &inner, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn fail<T>(&self, message: String) -> Result<T, Failure> {
        Err((self.line, message))
    }

    fn lookup(&mut self, from: &Value, path: &[String], root: bool) -> Result<Value, Failure> {
        let name = path.join(".");
        if root && !path.is_empty() {
            self.used.insert(name.to_ascii_lowercase());
        }
        let mut at = from;
        for (i, part) in path.iter().enumerate() {
            match at {
                Value::Map(m) => match m.get(&part.to_ascii_lowercase()) {
                    Some(v) => at = v,
                    None if root => {
                        return self.fail(format!(
                            "variable `{name}` is not defined (give it in definitions/{VARIABLES_FILE} or with --set {name}=VALUE)"
                        ));
                    }
                    None => {
                        return self
                            .fail(format!("`.{name}`: the current item has no key {part:?}"));
                    }
                },
                other => {
                    let parent = path[..i].join(".");
                    return self.fail(format!(
                        "`.{name}`: `.{parent}` is {}, not a mapping with key {part:?}",
                        type_name(other)
                    ));
                }
            }
        }
        Ok(at.clone())
    }

    fn pipe(&mut self, pipe: &Pipe, scope: &Scope) -> Result<Value, Failure> {
        let mut last: Option<Value> = None;
        for cmd in pipe {
            last = Some(self.command(cmd, scope, last)?);
        }
        Ok(last.expect("a pipeline has a command"))
    }

    fn operand(&mut self, op: &Operand, scope: &Scope) -> Result<Value, Failure> {
        match op {
            Operand::Dot(p) => self.lookup(&scope.dot, p, scope.at_root),
            Operand::Root(p) => self.lookup(scope.root, p, true),
            Operand::Lit(v) => Ok(v.clone()),
            Operand::Sub(p) => self.pipe(p, scope),
            Operand::Func(f) => self.call(f, Vec::new()),
        }
    }

    fn command(
        &mut self,
        cmd: &Command,
        scope: &Scope,
        piped: Option<Value>,
    ) -> Result<Value, Failure> {
        let Operand::Func(name) = &cmd[0] else {
            if cmd.len() > 1 || piped.is_some() {
                return self.fail("only a function takes arguments".into());
            }
            return self.operand(&cmd[0], scope);
        };
        // `and` and `or` stop at the first argument that decides.
        if name == "and" || name == "or" {
            let args: Vec<&Operand> = cmd[1..].iter().collect();
            let piped_len = usize::from(piped.is_some());
            if args.len() + piped_len == 0 {
                return self.fail(format!(
                    "wrong number of args for {name}: want at least 1 got 0"
                ));
            }
            let mut last = Value::Bool(false);
            let total = args.len() + piped_len;
            for i in 0..total {
                let v = if i < args.len() {
                    self.operand(args[i], scope)?
                } else {
                    piped.clone().expect("counted")
                };
                let t = truth(&v);
                last = v;
                if (name == "and" && !t) || (name == "or" && t) {
                    break;
                }
            }
            return Ok(last);
        }
        let mut args = Vec::with_capacity(cmd.len());
        for op in &cmd[1..] {
            args.push(self.operand(op, scope)?);
        }
        if let Some(p) = piped {
            args.push(p);
        }
        self.call(name, args)
    }

    fn call(&mut self, name: &str, args: Vec<Value>) -> Result<Value, Failure> {
        let line = self.line;
        let fail = |m: String| -> Failure { (line, format!("{name}: {m}")) };
        let count = |want: usize| -> Result<(), Failure> {
            if args.len() == want {
                Ok(())
            } else {
                Err(fail(format!(
                    "wrong number of args: want {want} got {}",
                    args.len()
                )))
            }
        };
        let text = |i: usize| -> Result<&str, Failure> {
            match &args[i] {
                Value::Text(s) => Ok(s),
                other => Err(fail(format!(
                    "argument {} is {}, not a string",
                    i + 1,
                    type_name(other)
                ))),
            }
        };
        let int = |i: usize| -> Result<i64, Failure> {
            match &args[i] {
                Value::Number(n) if n.parse::<i64>().is_ok() => Ok(n.parse().expect("checked")),
                other => Err(fail(format!(
                    "argument {} is {}, not a whole number",
                    i + 1,
                    type_name(other)
                ))),
            }
        };
        let t = |s: String| Ok(Value::Text(s));
        let b = |v: bool| Ok(Value::Bool(v));
        match name {
            "upper" => {
                count(1)?;
                t(text(0)?.to_uppercase())
            }
            "lower" => {
                count(1)?;
                t(text(0)?.to_lowercase())
            }
            "title" => {
                count(1)?;
                t(title(text(0)?))
            }
            "trim" => {
                count(1)?;
                t(text(0)?.trim().to_string())
            }
            "trimPrefix" => {
                count(2)?;
                let s = text(0)?;
                t(s.strip_prefix(text(1)?).unwrap_or(s).to_string())
            }
            "trimSuffix" => {
                count(2)?;
                let s = text(0)?;
                t(s.strip_suffix(text(1)?).unwrap_or(s).to_string())
            }
            "contains" => {
                count(2)?;
                b(text(0)?.contains(text(1)?))
            }
            "hasPrefix" => {
                count(2)?;
                b(text(0)?.starts_with(text(1)?))
            }
            "hasSuffix" => {
                count(2)?;
                b(text(0)?.ends_with(text(1)?))
            }
            "replace" => {
                if args.len() == 3 {
                    return Err(fail(
                        "wrong number of args: want 4 got 3 (simplecontainer's replace is `replace OLD NEW COUNT STRING`; `replaceAll OLD NEW STRING` replaces every one)"
                            .into(),
                    ));
                }
                count(4)?;
                let (old, new, n, s) = (text(0)?, text(1)?, int(2)?, text(3)?);
                t(match usize::try_from(n) {
                    Ok(n) => s.replacen(old, new, n),
                    Err(_) => s.replace(old, new),
                })
            }
            "replaceAll" => {
                count(3)?;
                t(text(2)?.replace(text(0)?, text(1)?))
            }
            "quote" => {
                count(1)?;
                t(go_quote(text(0)?))
            }
            "squote" => {
                count(1)?;
                t(format!("'{}'", text(0)?))
            }
            "indent" | "nindent" => {
                count(2)?;
                let n = usize::try_from(int(0)?)
                    .map_err(|_| fail("the number of spaces is negative".into()))?;
                let pad = " ".repeat(n);
                let body = format!("{pad}{}", text(1)?.replace('\n', &format!("\n{pad}")));
                t(if name == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            "default" => {
                count(2)?;
                let mut args = args;
                let value = args.pop().expect("two");
                let fallback = args.pop().expect("two");
                Ok(if value == Value::Text(String::new()) {
                    fallback
                } else {
                    value
                })
            }
            "empty" => {
                count(1)?;
                b(match &args[0] {
                    Value::Text(s) => s.is_empty(),
                    Value::List(l) => l.is_empty(),
                    Value::Map(m) => m.is_empty(),
                    Value::Number(_) | Value::Bool(_) => false,
                })
            }
            "ternary" => {
                count(3)?;
                let Value::Bool(c) = args[0] else {
                    return Err(fail(format!(
                        "argument 1 is {}, not a boolean",
                        type_name(&args[0])
                    )));
                };
                Ok(args[if c { 1 } else { 2 }].clone())
            }
            "b64enc" | "base64encode" => {
                count(1)?;
                t(b64_encode(text(0)?.as_bytes()))
            }
            "b64dec" | "base64decode" => {
                count(1)?;
                let bytes = b64_decode(text(0)?).map_err(fail)?;
                t(String::from_utf8_lossy(&bytes).into_owned())
            }
            "toString" => {
                count(1)?;
                t(show(&args[0]))
            }
            "not" => {
                count(1)?;
                b(!truth(&args[0]))
            }
            "len" => {
                count(1)?;
                let n = match &args[0] {
                    Value::Text(s) => s.len(),
                    Value::List(l) => l.len(),
                    Value::Map(m) => m.len(),
                    other => return Err(fail(format!("len of {}", type_name(other)))),
                };
                Ok(Value::Number(n.to_string()))
            }
            "eq" | "ne" => {
                if args.len() < 2 {
                    return Err(fail(format!(
                        "wrong number of args: want at least 2 got {}",
                        args.len()
                    )));
                }
                let mut any = false;
                for other in &args[1..] {
                    if compare(&args[0], other).map_err(fail)? == std::cmp::Ordering::Equal {
                        any = true;
                    }
                }
                if name == "ne" {
                    count(2)?;
                    b(!any)
                } else {
                    b(any)
                }
            }
            "lt" | "le" | "gt" | "ge" => {
                count(2)?;
                if matches!(args[0], Value::Bool(_)) || matches!(args[1], Value::Bool(_)) {
                    return Err(fail("invalid type for comparison".into()));
                }
                let o = compare(&args[0], &args[1]).map_err(fail)?;
                b(match name {
                    "lt" => o.is_lt(),
                    "le" => o.is_le(),
                    "gt" => o.is_gt(),
                    _ => o.is_ge(),
                })
            }
            other => Err(fail(format!("function {other:?} is not supported"))),
        }
    }
}

/// Go's comparison of two basic values: strings with strings, whole numbers with whole
/// numbers, other numbers with other numbers, booleans with booleans.
fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    let num = |n: &str| -> (Option<i64>, Option<f64>) { (n.parse().ok(), n.parse().ok()) };
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => match (num(x), num(y)) {
            ((Some(i), _), (Some(j), _)) => Ok(i.cmp(&j)),
            ((None, Some(f)), (None, Some(g))) => f
                .partial_cmp(&g)
                .ok_or_else(|| "numbers that cannot be compared".into()),
            _ => Err("incompatible types for comparison (a whole number and a decimal)".into()),
        },
        (x, y) => Err(format!(
            "incompatible types for comparison ({} and {})",
            type_name(x),
            type_name(y)
        )),
    }
}

/// `strings.Title`: the first letter of each word in upper case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else {
            c.is_whitespace()
        };
    }
    out
}

/// `strconv.Quote`: Go's double-quoted form.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || c == '\u{a0}' || c == '\u{ad}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding, as Go's `base64.StdEncoding` (new lines are ignored).
fn b64_decode(text: &str) -> Result<Vec<u8>, String> {
    let clean: Vec<(usize, u8)> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b != b'\n' && *b != b'\r')
        .collect();
    if !clean.len().is_multiple_of(4) {
        let at = clean.len() - clean.len() % 4;
        return Err(format!("illegal base64 data at input byte {at}"));
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for (q, quad) in clean.chunks(4).enumerate() {
        let last = q + 1 == clean.len() / 4;
        let mut n = 0u32;
        let mut pads = 0;
        for (i, (at, b)) in quad.iter().enumerate() {
            let v = match b {
                b'=' if last && i >= 2 => {
                    pads += 1;
                    0
                }
                _ if pads > 0 => return Err(format!("illegal base64 data at input byte {at}")),
                b => B64
                    .iter()
                    .position(|c| c == b)
                    .ok_or_else(|| format!("illegal base64 data at input byte {at}"))?
                    as u32,
            };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pads]);
    }
    Ok(out)
}

fn dotted(pipe: &Pipe) -> String {
    match pipe.as_slice() {
        [cmd] => match cmd.as_slice() {
            [Operand::Dot(p)] | [Operand::Root(p)] => p.join("."),
            _ => "NAME".into(),
        },
        _ => "NAME".into(),
    }
}

fn describe(pipe: &Pipe) -> String {
    match pipe.as_slice() {
        [cmd] => match cmd.as_slice() {
            [Operand::Dot(p)] | [Operand::Root(p)] if !p.is_empty() => {
                format!("variable `{}`", p.join("."))
            }
            _ => "the value".into(),
        },
        _ => "the value".into(),
    }
}

/// Renders `text` with `vars` as the root (`.` and `$`). Returns the text and the (lowercased,
/// dotted) variables read from the root.
pub(crate) fn execute(
    text: &str,
    vars: &BTreeMap<String, Value>,
) -> Result<(String, BTreeSet<String>), Failure> {
    let pieces = split(text)?;
    let mut iter = pieces.into_iter().peekable();
    let (nodes, end) = parse_nodes(&mut iter)?;
    match end {
        Stop::Eof => {}
        Stop::End(line) => {
            return Err((
                line,
                "`{{ end }}` without `{{ if }}`, `{{ range }}` or `{{ with }}`".into(),
            ));
        }
        Stop::Else(line, _) => {
            return Err((
                line,
                "`{{ else }}` without `{{ if }}`, `{{ range }}` or `{{ with }}`".into(),
            ));
        }
    }
    let root = Value::Map(vars.clone());
    let mut used = BTreeSet::new();
    let mut out = String::with_capacity(text.len());
    let scope = Scope {
        root: &root,
        dot: root.clone(),
        at_root: true,
    };
    Run {
        used: &mut used,
        line: 0,
    }
    .nodes(&nodes, &scope, &mut out)?;
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::Variables;

    fn vars() -> Variables {
        Variables::parse(
            "variables.yaml",
            "name: Web App\nempty: \"\"\nnothing:\nreplicas: 2\nratio: 0.5\ndebug: false\nenabled: true\n\
             env: prod\nports: [80, 443]\nlabels: {tier: front, app: web}\n\
             routes:\n  - {host: a.test, path: /}\n  - {host: b.test, path: /api}\n\
             cert: \"line1\\nline2\"\nsecret: aGVsbG8=\n",
        )
        .unwrap()
    }

    fn render(text: &str) -> Result<String, Failure> {
        execute(text, &vars().root_for_tests()).map(|(out, _)| out)
    }

    fn ok(text: &str) -> String {
        render(text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    fn err(text: &str) -> String {
        match render(text) {
            Ok(out) => panic!("{text} rendered {out:?}"),
            Err((_, m)) => m,
        }
    }

    #[test]
    fn string_functions_behave_as_simplecontainers() {
        assert_eq!(
            ok("{{ .name | upper }} {{ lower .name }} {{ title \"a b-c_d\" }}"),
            "WEB APP web app A B-C_d"
        );
        assert_eq!(
            ok(
                "{{ trim \"  x \\t\" }}|{{ trimPrefix .name \"Web \" }}|{{ .name | trimSuffix \"p\" }}"
            ),
            "x|App|p"
        );
        assert_eq!(
            ok(
                "{{ contains .name \"App\" }} {{ hasPrefix .name \"Web\" }} {{ hasSuffix .name \"x\" }}"
            ),
            "true true false"
        );
        assert_eq!(
            ok(
                "{{ replace \"a\" \"o\" 1 \"banana\" }} {{ replace \"a\" \"o\" -1 \"banana\" }} {{ replaceAll \"a\" \"\" \"banana\" }}"
            ),
            "bonana bonono bnn"
        );
        assert_eq!(
            ok("{{ .name | quote }} {{ quote \"a\\\"b\\\\c\\n\" }} {{ squote .name }}"),
            "\"Web App\" \"a\\\"b\\\\c\\n\" 'Web App'"
        );
        assert_eq!(ok("x:{{ .cert | indent 2 }}"), "x:  line1\n  line2");
        assert_eq!(ok("x:{{ .cert | nindent 4 }}"), "x:\n    line1\n    line2");
        assert_eq!(
            ok(
                "{{ .name | b64enc }} {{ base64encode \"ab\" }} {{ .secret | b64dec }} {{ base64decode \"YQ==\" }}"
            ),
            "V2ViIEFwcA== YWI= hello a"
        );
        assert_eq!(
            ok("{{ toString .replicas }}{{ toString .ports }}{{ toString .labels }}"),
            "2[80 443]map[app:web tier:front]"
        );
    }

    #[test]
    fn default_and_empty_follow_go_values() {
        assert_eq!(
            ok(
                "{{ .empty | default \"x\" }} {{ .nothing | default \"y\" }} {{ .env | default \"z\" }}"
            ),
            "x y prod"
        );
        // Zero numbers and false are not replaced by simplecontainer's `default` (only nil and "").
        assert_eq!(
            ok("{{ .debug | default true }} {{ default 1 0 }}"),
            "false 0"
        );
        assert_eq!(
            ok("{{ empty .empty }} {{ empty .ports }} {{ empty .debug }} {{ empty 0 }}"),
            "true false false false"
        );
        // A variable that does not exist is an error, with or without default (missingkey=error).
        assert!(err("{{ .absent | default \"x\" }}").contains("variable `absent` is not defined"));
    }

    #[test]
    fn conditionals_and_loops() {
        assert_eq!(
            ok("{{ if .debug }}d{{ else if eq .env \"prod\" }}p{{ else }}o{{ end }}"),
            "p"
        );
        assert_eq!(
            ok(
                "{{ if and .enabled (not .debug) }}yes{{ end }}{{ if or .debug .empty }}no{{ end }}"
            ),
            "yes"
        );
        assert_eq!(
            ok(
                "{{ if .replicas }}{{ .replicas }}{{ end }}{{ if .ratio }}r{{ end }}{{ if 0 }}z{{ end }}"
            ),
            "2r"
        );
        assert_eq!(
            ok(
                "ports:\n{{- range .ports }}\n  - {{ . }}{{ end }}\n{{ range .routes }}{{ .host }}{{ .path }};{{ end }}"
            ),
            "ports:\n  - 80\n  - 443\na.test/;b.test/api;"
        );
        assert_eq!(ok("{{ range .labels }}{{ . }},{{ end }}"), "web,front,");
        assert_eq!(ok("{{ range .nothing }}x{{ else }}none{{ end }}"), "none");
        assert_eq!(
            ok(
                "{{ with .labels }}{{ .tier }}-{{ $.env }}{{ end }}{{ with .empty }}x{{ else }}e{{ end }}"
            ),
            "front-prode"
        );
        assert_eq!(
            ok(
                "{{ ternary .enabled \"a\" \"b\" }} {{ len .ports }} {{ len .name }} {{ gt .replicas 1 }} {{ lt \"a\" \"b\" }} {{ ne .env \"dev\" }}"
            ),
            "a 2 7 true true true"
        );
        assert_eq!(
            ok("{{ (upper .env) | quote }} {{ eq .replicas 1 2 }}"),
            "\"PROD\" true"
        );
    }

    #[test]
    fn what_is_refused_names_it() {
        assert!(err("{{ .name | toYaml }}").starts_with("`{{ .name | toYaml }}`: function \"toYaml\" is not supported in pack templates (supported: and, "));
        assert!(err("{{ printf \"%s\" .name }}").contains("function \"printf\" is not supported"));
        assert!(err("{{ $x := .name }}").contains("template variables"));
        assert!(err("{{ range $i, $v := .ports }}{{ end }}").contains("template variables"));
        assert!(err("{{ define \"x\" }}{{ end }}").contains("`define` is not supported"));
        assert_eq!(
            err("{{ upper .replicas }}"),
            "upper: argument 1 is a number, not a string"
        );
        assert_eq!(
            err("{{ indent \"2\" .name }}"),
            "indent: argument 1 is a string, not a whole number"
        );
        assert!(
            err("{{ replace \"a\" \"b\" .name }}")
                .starts_with("replace: wrong number of args: want 4 got 3")
        );
        assert_eq!(
            err("{{ upper }}"),
            "upper: wrong number of args: want 1 got 0"
        );
        assert!(err("{{ eq .replicas \"2\" }}").contains("incompatible types for comparison"));
        assert_eq!(
            err("{{ b64dec \"abc\" }}"),
            "b64dec: illegal base64 data at input byte 0"
        );
        assert!(err("{{ if .enabled }}x").contains("has no `{{ end }}`"));
        assert!(err("x{{ end }}").contains("without `{{ if }}`"));
        assert!(err("{{ .labels.tier.x }}").contains("`.labels.tier` is a string, not a mapping"));
        assert!(err("{{ range .name }}{{ end }}").contains("range can't iterate over a string"));
        assert!(err("{{ .name \"x\" }}").contains("only a function takes arguments"));
        let (line, _) = render("a\nb\n{{ nope }}").unwrap_err();
        assert_eq!(line, 3);
    }

    #[test]
    fn used_variables_are_those_read_from_the_root() {
        let (_, used) = execute(
            "{{ range .routes }}{{ .host }}{{ $.env }}{{ end }}{{ .labels.tier | upper }}",
            &vars().root_for_tests(),
        )
        .unwrap();
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["env", "labels.tier", "routes"]
        );
    }

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "hello, world\n"] {
            let e = b64_encode(s.as_bytes());
            assert_eq!(b64_decode(&e).unwrap(), s.as_bytes(), "{e}");
        }
        assert!(b64_decode("YQ=a").is_err());
    }
}
