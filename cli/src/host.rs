//! Host access for the session proxy: `{ host { directory(path: ...) { id } } }` and
//! `{ host { file(path: ...) { id } } }` are answered here, next to the client's files.
//!
//! The engine may be remote and never reads the client's disk. The proxy reads the path
//! (relative to the session's working directory), packs it into a deterministic tar, asks the
//! engine whether it already holds that tar (`GET /upload/<sha256>`), uploads it otherwise
//! (`POST /upload`), and answers the SDK with the Directory or File ID the engine returned.
//!
//! Secrets named by the client are read here too: `{ secret(uri: "env://NAME") { id } }`
//! (`env://` from the session's environment, `file://` relative to its working directory) and
//! `{ host { setSecretFile(name: ..., path: ...) { id } } }` become a `setSecret` on the engine,
//! sent with GraphQL variables so the value never appears in a query text.
//!
//! Only that shape is served, which is the one the SDKs send (they resolve a host object to an
//! ID in a query of its own). Any other use of `host` gets a GraphQL error.

use crate::client::Client;
use anyhow::{bail, Context as _};
use dagger_engine::solver::filter::{Decision, Filter};
use serde_json::{json, Value};
use sha2::Digest as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Cap on one upload (the engine refuses larger bodies too).
const MAX_TAR_BYTES: usize = 1 << 30;

// ---------------------------------------------------------------------------------------
// The query scanner
// ---------------------------------------------------------------------------------------

/// What a GraphQL document asks of `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostQuery {
    /// No top-level `host` field: forward the request to the engine.
    NotHost,
    /// `{ host { directory(...) { id } } }` or `file(...)`.
    Call(HostCall),
    /// Uses `host` in a way the proxy does not serve: answer this GraphQL error.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostObject {
    Directory {
        path: String,
        include: Vec<String>,
        exclude: Vec<String>,
    },
    File {
        path: String,
    },
    /// `Host.setSecretFile(name, path)`.
    SecretFile {
        name: String,
        path: String,
    },
    /// `Query.secret(uri)`: `env://NAME` or `file://PATH`, read on this machine.
    SecretUri {
        uri: String,
    },
    /// `Host.unixSocket(path)`: forwarded to the engine for as long as the session lives.
    UnixSocket {
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCall {
    /// Response keys down to the object (`[host, directory]`, or `[secret]`): the alias when
    /// there is one, else the field name.
    pub keys: Vec<String>,
    pub id_key: String,
    /// The selection set under the host field, when it is more than `{ id }`: sent to the
    /// engine on `loadDirectoryFromID`/`loadFileFromID` once the upload is done.
    pub forward: Option<String>,
    pub object: HostObject,
}

impl HostCall {
    /// The GraphQL answer for `id`.
    pub fn answer(&self, id: &str) -> Value {
        let mut id_obj = serde_json::Map::new();
        id_obj.insert(self.id_key.clone(), json!(id));
        json!({ "data": self.nest(Value::Object(id_obj)) })
    }

    /// `value` under the client's response keys, outermost last.
    fn nest(&self, value: Value) -> Value {
        self.keys.iter().rev().fold(value, |inner, key| {
            let mut m = serde_json::Map::new();
            m.insert(key.clone(), inner);
            Value::Object(m)
        })
    }

    /// Where errors about the object point.
    fn error_path(&self) -> Value {
        json!(self.keys)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Punct(char),
    /// Numbers, `...`, `$`: anything the served shape never contains.
    Other(String),
}

/// Where each token starts and ends, in chars of the document.
type Spans = Vec<(usize, usize)>;

/// The tokens, with each one's span in chars of `src`.
fn lex(src: &str) -> Result<(Vec<Tok>, Spans), String> {
    let b: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let mut spans = Vec::new();
    while i < b.len() {
        let c = b[i];
        let tok_start = i;
        let before = out.len();
        lex_one(&b, &mut i, c, &mut out)?;
        if out.len() > before {
            spans.push((tok_start, i));
        }
    }
    Ok((out, spans))
}

/// Lexes the token (or skips the blank or comment) at `*i`, advancing `*i` past it.
fn lex_one(b: &[char], i: &mut usize, c: char, out: &mut Vec<Tok>) -> Result<(), String> {
    let i_ref = i;
    let mut i = *i_ref;
    {
        if c.is_whitespace() || c == ',' || c == '\u{feff}' {
            i += 1;
        } else if c == '#' {
            while i < b.len() && b[i] != '\n' && b[i] != '\r' {
                i += 1;
            }
        } else if c == '_' || c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && (b[i] == '_' || b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            out.push(Tok::Name(b[start..i].iter().collect()));
        } else if c == '"' {
            if b.get(i + 1) == Some(&'"') && b.get(i + 2) == Some(&'"') {
                return Err("block strings are not supported in host queries".into());
            }
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&c) = b.get(i) else {
                    return Err("unterminated string".into());
                };
                i += 1;
                match c {
                    '"' => break,
                    '\n' | '\r' => return Err("unterminated string".into()),
                    '\\' => {
                        let Some(&e) = b.get(i) else {
                            return Err("unterminated string".into());
                        };
                        i += 1;
                        match e {
                            '"' => s.push('"'),
                            '\\' => s.push('\\'),
                            '/' => s.push('/'),
                            'b' => s.push('\u{8}'),
                            'f' => s.push('\u{c}'),
                            'n' => s.push('\n'),
                            'r' => s.push('\r'),
                            't' => s.push('\t'),
                            'u' => {
                                let hex: String = b.get(i..i + 4).unwrap_or(&[]).iter().collect();
                                let code = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .filter(|_| hex.len() == 4)
                                    .ok_or("bad \\u escape")?;
                                i += 4;
                                s.push(char::from_u32(code).ok_or("bad \\u escape")?);
                            }
                            _ => return Err(format!("bad escape \\{e}")),
                        }
                    }
                    c => s.push(c),
                }
            }
            out.push(Tok::Str(s));
        } else if "{}()[]:=@!".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else if c == '.' && b.get(i + 1) == Some(&'.') && b.get(i + 2) == Some(&'.') {
            out.push(Tok::Other("...".into()));
            i += 3;
        } else if c == '-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || "+-.".contains(b[i])) {
                i += 1;
            }
            out.push(Tok::Other(b[start..i].iter().collect()));
        } else {
            out.push(Tok::Other(c.to_string()));
            i += 1;
        }
    }
    *i_ref = i;
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    List(Vec<Val>),
    Bool(bool),
    /// Variables, numbers, enums, objects, null: nothing the served arguments take.
    Other,
}

#[derive(Debug)]
struct Field {
    alias: Option<String>,
    name: String,
    args: Vec<(String, Val)>,
    selections: Vec<Field>,
    /// The selection set's text, braces included.
    selection_text: Option<(usize, usize)>,
    /// Fragments or directives appeared: not a plain selection.
    fancy: bool,
}

impl Field {
    fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

struct Parser {
    toks: Vec<Tok>,
    spans: Spans,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {c:?}"))
        }
    }
    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Name(n)) => Ok(n),
            t => Err(format!("expected a name, found {t:?}")),
        }
    }

    /// `{ field ... }` (the `{` not yet consumed).
    fn selection_set(&mut self) -> Result<Vec<Field>, String> {
        self.expect('{')?;
        let mut fields = Vec::new();
        while !self.eat('}') {
            fields.push(self.field()?);
        }
        Ok(fields)
    }

    fn field(&mut self) -> Result<Field, String> {
        let mut fancy = false;
        if let Some(Tok::Other(o)) = self.peek() {
            if o == "..." {
                return Err("fragments are not supported in host queries".into());
            }
        }
        let first = self.name()?;
        let (alias, name) = if self.eat(':') {
            (Some(first), self.name()?)
        } else {
            (None, first)
        };
        let mut args = Vec::new();
        if self.eat('(') {
            while !self.eat(')') {
                let arg = self.name()?;
                self.expect(':')?;
                args.push((arg, self.value()?));
            }
        }
        while self.eat('@') {
            fancy = true;
            self.name()?;
            if self.eat('(') {
                while !self.eat(')') {
                    self.name()?;
                    self.expect(':')?;
                    self.value()?;
                }
            }
        }
        let mut selection_text = None;
        let selections = if self.peek() == Some(&Tok::Punct('{')) {
            let start = self.spans[self.pos].0;
            let s = self.selection_set()?;
            selection_text = Some((start, self.spans[self.pos - 1].1));
            s
        } else {
            Vec::new()
        };
        Ok(Field {
            alias,
            name,
            args,
            selections,
            selection_text,
            fancy,
        })
    }

    fn value(&mut self) -> Result<Val, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Val::Str(s)),
            Some(Tok::Name(n)) if n == "true" => Ok(Val::Bool(true)),
            Some(Tok::Name(n)) if n == "false" => Ok(Val::Bool(false)),
            Some(Tok::Name(_)) => Ok(Val::Other),
            Some(Tok::Other(o)) if o == "$" => {
                self.name()?;
                Ok(Val::Other)
            }
            Some(Tok::Other(_)) => Ok(Val::Other),
            Some(Tok::Punct('[')) => {
                let mut items = Vec::new();
                while !self.eat(']') {
                    items.push(self.value()?);
                }
                Ok(Val::List(items))
            }
            Some(Tok::Punct('{')) => {
                while !self.eat('}') {
                    self.name()?;
                    self.expect(':')?;
                    self.value()?;
                }
                Ok(Val::Other)
            }
            t => Err(format!("expected a value, found {t:?}")),
        }
    }
}

/// Finds what `query` asks of `host` (or of `secret`). Cheap when the text mentions neither.
pub fn scan(query: &str) -> HostQuery {
    if !mentions_client_fields(query.as_bytes()) {
        return HostQuery::NotHost;
    }
    let (toks, spans) = match lex(query) {
        Ok(t) => t,
        // The engine reports syntax errors better.
        Err(_) => return HostQuery::NotHost,
    };
    let mut p = Parser {
        toks,
        spans,
        pos: 0,
    };
    // `query Name($v: T) { ... }` or `{ ... }`; mutations and fragments go to the engine.
    if let Some(Tok::Name(n)) = p.peek() {
        if n != "query" {
            return HostQuery::NotHost;
        }
        p.pos += 1;
        if let Some(Tok::Name(_)) = p.peek() {
            p.pos += 1;
        }
        if p.eat('(') {
            let mut depth = 1;
            while depth > 0 {
                match p.next() {
                    Some(Tok::Punct('(')) => depth += 1,
                    Some(Tok::Punct(')')) => depth -= 1,
                    None => return HostQuery::NotHost,
                    _ => {}
                }
            }
        }
    }
    let top = match p.selection_set() {
        Ok(t) => t,
        // Something the scanner does not follow: the engine reports syntax errors, unless the
        // document uses `host`, which the engine does not serve.
        Err(e) if p.toks.contains(&Tok::Name("host".into())) => {
            return HostQuery::Unsupported(format!(
                "this use of Query.host is not served by this dagger session ({e})"
            ))
        }
        Err(_) => return HostQuery::NotHost,
    };
    if let [secret] = top.as_slice() {
        if secret.name == "secret" {
            return scan_secret(query, &p, secret);
        }
    }
    if !top.iter().any(|f| f.name == "host") {
        return HostQuery::NotHost;
    }
    let unsupported = |what: &str| {
        HostQuery::Unsupported(format!(
            "{what} is not served by this dagger session: host directories and files are resolved \
         one at a time, as `{{ host {{ directory(path: \"...\") {{ id }} }} }}` or \
         `{{ host {{ file(path: \"...\") {{ id }} }} }}`"
        ))
    };
    if p.peek().is_some() {
        return unsupported("a document with several operations or fragments using host");
    }
    if top.len() != 1 {
        return unsupported("host combined with other fields in one query");
    }
    let host = &top[0];
    if host.fancy || !host.args.is_empty() {
        return unsupported("this use of Query.host");
    }
    if host.selections.len() != 1 {
        return unsupported("selecting several Host fields at once");
    }
    let field = &host.selections[0];
    if !matches!(
        field.name.as_str(),
        "directory" | "file" | "setSecretFile" | "unixSocket"
    ) {
        return unsupported(&format!("Host.{}", field.name));
    }
    if field.fancy || field.selection_text.is_none() {
        return unsupported(&format!("this selection on Host.{}", field.name));
    }
    let forward = match forward_selection(query, &p, field) {
        Ok(f) => f,
        Err(()) => return unsupported("variables in a host query"),
    };
    let mut path = None;
    let mut secret_name = None;
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    for (name, value) in &field.args {
        match (field.name.as_str(), name.as_str(), value) {
            (_, "path", Val::Str(s)) => path = Some(s.clone()),
            ("setSecretFile", "name", Val::Str(s)) => secret_name = Some(s.clone()),
            ("directory", "include" | "exclude", Val::List(items)) => {
                let mut strings = Vec::new();
                for item in items {
                    match item {
                        Val::Str(s) => strings.push(s.clone()),
                        _ => {
                            return unsupported(&format!(
                                "a non-string item in Host.directory({name})"
                            ))
                        }
                    }
                }
                if name == "include" {
                    include = strings;
                } else {
                    exclude = strings;
                }
            }
            ("directory", "include" | "exclude", Val::Str(s)) => {
                // GraphQL input coercion: a single value is a list of one.
                if name == "include" {
                    include = vec![s.clone()];
                } else {
                    exclude = vec![s.clone()];
                }
            }
            // Every read is fresh here: there is nothing to skip.
            (_, "noCache", Val::Bool(_)) => {}
            ("directory", "gitignore", Val::Bool(false)) => {}
            _ => {
                return unsupported(&format!(
                    "argument {name} (with this value) of Host.{}",
                    field.name
                ))
            }
        }
    }
    let Some(path) = path else {
        return unsupported(&format!("Host.{} without a string path", field.name));
    };
    let object = match field.name.as_str() {
        "directory" => HostObject::Directory {
            path,
            include,
            exclude,
        },
        "setSecretFile" => match secret_name {
            Some(name) => HostObject::SecretFile { name, path },
            None => return unsupported("Host.setSecretFile without a string name"),
        },
        "unixSocket" => HostObject::UnixSocket { path },
        _ => HostObject::File { path },
    };
    HostQuery::Call(HostCall {
        keys: vec![host.key().to_string(), field.key().to_string()],
        id_key: field.selections[0].key().to_string(),
        forward,
        object,
    })
}

/// What to run on the object once it exists: `None` when only `{ id }` is selected, else the
/// selection's text (sent on `load*FromID`). `Err` when the document uses variables, which
/// that text could not carry. `field.selection_text` must be set.
fn forward_selection(query: &str, p: &Parser, field: &Field) -> Result<Option<String>, ()> {
    let id_only = field.selections.len() == 1
        && field.selections[0].name == "id"
        && !field.selections[0].fancy
        && field.selections[0].args.is_empty()
        && field.selections[0].selections.is_empty();
    if id_only {
        return Ok(None);
    }
    if p.toks
        .iter()
        .any(|t| matches!(t, Tok::Other(o) if o == "$"))
    {
        return Err(());
    }
    let Some((start, end)) = field.selection_text else {
        return Err(());
    };
    Ok(Some(query.chars().skip(start).take(end - start).collect()))
}

/// Whether a document may use `host` or `secret`: the cheap test before any parsing.
pub fn mentions_client_fields(query: &[u8]) -> bool {
    query.windows(4).any(|w| w == b"host") || query.windows(6).any(|w| w == b"secret")
}

/// `{ secret(uri: "...") { id } }`, alone in its document.
fn scan_secret(query: &str, p: &Parser, secret: &Field) -> HostQuery {
    let unsupported = |what: &str| {
        HostQuery::Unsupported(format!(
            "{what} is not served by this dagger session: client secrets are resolved one at a \
             time, as `{{ secret(uri: \"env://NAME\") {{ id }} }}`"
        ))
    };
    if p.peek().is_some() {
        return unsupported("a document with several operations using secret");
    }
    let uri = match secret.args.as_slice() {
        [(name, Val::Str(uri))] if name == "uri" => uri.clone(),
        _ => return unsupported("Query.secret without a single string uri argument"),
    };
    if secret.fancy || secret.selection_text.is_none() || secret.selections.is_empty() {
        return unsupported("this selection on Query.secret");
    }
    let forward = match forward_selection(query, p, secret) {
        Ok(f) => f,
        Err(()) => return unsupported("variables in a secret query"),
    };
    HostQuery::Call(HostCall {
        keys: vec![secret.key().to_string()],
        id_key: secret.selections[0].key().to_string(),
        forward,
        object: HostObject::SecretUri { uri },
    })
}

// ---------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------

/// Resolves `path` against the session's working directory.
fn host_path(path: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the session's working directory")?
        .join(p))
}

fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.permissions().mode() & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}

/// The tar the upload format cannot carry: names the engine would take for whiteouts.
fn check_name(rel: &str) -> anyhow::Result<()> {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    if base.starts_with(".wh.") {
        bail!("cannot upload {rel:?}: names starting with .wh. are reserved for layer whiteouts");
    }
    Ok(())
}

enum Item {
    Dir(String, std::fs::Metadata),
    File(String, PathBuf),
    Symlink(String, std::fs::Metadata, PathBuf),
}

/// Entries under `dir` (relative names under `prefix`), sorted, filtered, never following a
/// symlink (a link is packed as a link, whatever it points to).
fn collect(dir: &Path, prefix: &str, filter: &Filter, out: &mut Vec<Item>) -> anyhow::Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in names {
        let Some(name_str) = name.to_str() else {
            bail!(
                "cannot upload {:?}: file names must be UTF-8",
                dir.join(&name)
            );
        };
        let rel = if prefix.is_empty() {
            name_str.to_string()
        } else {
            format!("{prefix}/{name_str}")
        };
        let full = dir.join(&name);
        let meta = std::fs::symlink_metadata(&full)
            .with_context(|| format!("reading {}", full.display()))?;
        let ft = meta.file_type();
        let decision = filter.decide(&rel, ft.is_dir());
        if decision == Decision::Skip {
            continue;
        }
        if ft.is_dir() {
            let mut children = Vec::new();
            collect(&full, &rel, filter, &mut children)?;
            if decision == Decision::Copy || !children.is_empty() {
                check_name(&rel)?;
                out.push(Item::Dir(rel, meta));
                out.extend(children);
            }
        } else if decision == Decision::Copy {
            check_name(&rel)?;
            if ft.is_symlink() {
                let target = std::fs::read_link(&full)
                    .with_context(|| format!("reading the link {}", full.display()))?;
                out.push(Item::Symlink(rel, meta, target));
            } else if ft.is_file() {
                out.push(Item::File(rel, full));
            }
            // Sockets, fifos and devices are not uploaded.
        }
    }
    Ok(())
}

fn pack(items: Vec<Item>) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Complete);
    let mut total: u64 = 0;
    for item in items {
        match item {
            Item::Dir(rel, meta) => {
                let mut h = header_for(&meta, tar::EntryType::Directory, 0);
                b.append_data(&mut h, format!("{rel}/"), std::io::empty())?;
            }
            Item::Symlink(rel, meta, target) => {
                let mut h = header_for(&meta, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, &rel, &target)?;
            }
            Item::File(rel, full) => {
                let f = std::fs::File::open(&full)
                    .with_context(|| format!("opening {}", full.display()))?;
                // Metadata from the open file, so size and contents agree.
                let meta = f.metadata()?;
                total += meta.len();
                if total > MAX_TAR_BYTES as u64 {
                    bail!(
                        "the host directory is larger than the upload cap ({MAX_TAR_BYTES} bytes)"
                    );
                }
                let mut h = header_for(&meta, tar::EntryType::Regular, meta.len());
                b.append_data(&mut h, &rel, std::io::Read::take(f, meta.len()))
                    .with_context(|| format!("reading {}", full.display()))?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// The tar of a host directory, with `include`/`exclude` applied as `withDirectory` does.
pub fn pack_directory(
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let filter = Filter::new(include, exclude).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut items = Vec::new();
    collect(root, "", &filter, &mut items)?;
    pack(items)
}

/// The tar of one host file, under its base name (which it returns).
pub fn pack_file(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{} has no UTF-8 file name", path.display()))?
        .to_string();
    check_name(&name)?;
    let tar = pack(vec![Item::File(name.clone(), path.to_path_buf())])?;
    Ok((name, tar))
}

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

/// Packs, uploads unless the engine already has the tar, and returns the GraphQL answer.
pub async fn serve(call: &HostCall, client: &Client) -> Value {
    let id = resolve(call, client).await;
    match (id, &call.forward) {
        (Ok(id), None) => call.answer(&id),
        (Ok(id), Some(selection)) => match forward(call, &id, selection, client).await {
            Ok(v) => v,
            Err(e) => json!({
                "data": null,
                "errors": [{ "message": format!("{e:#}"), "path": call.error_path() }],
            }),
        },
        (Err(e), _) => json!({
            "data": null,
            "errors": [{ "message": format!("{e:#}"), "path": call.error_path() }],
        }),
    }
}

/// Runs the rest of the query on the uploaded object, re-nested under the client's keys.
async fn forward(
    call: &HostCall,
    id: &str,
    selection: &str,
    client: &Client,
) -> anyhow::Result<Value> {
    let loader = match call.object {
        HostObject::Directory { .. } => "loadDirectoryFromID",
        HostObject::File { .. } => "loadFileFromID",
        HostObject::SecretFile { .. } | HostObject::SecretUri { .. } => "loadSecretFromID",
        HostObject::UnixSocket { .. } => "loadSocketFromID",
    };
    let (last, outer) = call.keys.split_last().expect("at least one key");
    let document = format!("{{ {last}: {loader}(id: {}) {selection} }}", json!(id));
    let answer = client.query(&document).await?.body;
    let mut out = serde_json::Map::new();
    let data = &answer["data"];
    let outer_call = HostCall {
        keys: outer.to_vec(),
        ..call.clone()
    };
    out.insert(
        "data".into(),
        if data.is_object() {
            outer_call.nest(data.clone())
        } else {
            Value::Null
        },
    );
    if let Some(errors) = answer["errors"].as_array() {
        let errors: Vec<Value> = errors
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if let Some(path) = e["path"].as_array() {
                    let mut p: Vec<Value> = outer.iter().map(|k| json!(k)).collect();
                    p.extend(path.iter().cloned());
                    e["path"] = Value::Array(p);
                }
                e
            })
            .collect();
        out.insert("errors".into(), Value::Array(errors));
    }
    Ok(Value::Object(out))
}

async fn resolve(call: &HostCall, client: &Client) -> anyhow::Result<String> {
    let object = call.object.clone();
    match &object {
        HostObject::SecretFile { name, path } => {
            let path = host_path(path)?;
            let value = tokio::fs::read(&path)
                .await
                .with_context(|| format!("reading the secret file {}", path.display()))?;
            return set_secret(client, name, value).await;
        }
        HostObject::SecretUri { uri } => {
            let value = read_secret_uri(uri)?;
            return set_secret(client, uri, value).await;
        }
        HostObject::UnixSocket { path } => {
            let path = host_path(path)?;
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("host unix socket {}", path.display()))?;
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                bail!("{} is not a unix socket", path.display());
            }
            let (id, handle) = crate::sockets::register(client).await?;
            crate::sockets::spawn_forwarder(client.clone(), handle, path);
            return Ok(id);
        }
        HostObject::Directory { .. } | HostObject::File { .. } => {}
    }
    let (file, tar) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        match &object {
            HostObject::Directory {
                path,
                include,
                exclude,
            } => Ok((None, pack_directory(&host_path(path)?, include, exclude)?)),
            HostObject::File { path } => {
                let (name, tar) = pack_file(&host_path(path)?)?;
                Ok((Some(name), tar))
            }
            HostObject::SecretFile { .. }
            | HostObject::SecretUri { .. }
            | HostObject::UnixSocket { .. } => {
                unreachable!("answered above")
            }
        }
    })
    .await??;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
    let query = match &file {
        Some(name) => format!(
            "?file={}",
            url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
        ),
        None => String::new(),
    };
    let (status, body) = client
        .send(
            hyper::Method::GET,
            &format!("/upload/{digest}{query}"),
            "application/json",
            Vec::new(),
        )
        .await?;
    let (status, body) = if status == 404 {
        client
            .send(
                hyper::Method::POST,
                &format!("/upload{query}"),
                "application/x-tar",
                tar,
            )
            .await?
    } else {
        (status, body)
    };
    let answer: Value = serde_json::from_slice(&body).with_context(|| {
        format!("the engine answered the upload with HTTP {status} and a body that is not JSON")
    })?;
    if status != 200 {
        bail!(
            "uploading to the engine failed (HTTP {status}): {}",
            answer["errors"][0]["message"]
                .as_str()
                .unwrap_or("no message")
        );
    }
    let key = if file.is_some() { "file" } else { "directory" };
    answer[key]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("the engine's upload answer has no {key} ID: {answer}"))
}

/// The value of `env://NAME` (this process's environment: the SDK program's, which spawned or
/// ran this session) or `file://PATH` (relative to the session's working directory).
fn read_secret_uri(uri: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(name) = uri.strip_prefix("env://") {
        return std::env::var_os(name)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| anyhow::anyhow!("secret {uri}: the variable {name} is not set"));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        let path = host_path(path)?;
        return std::fs::read(&path)
            .with_context(|| format!("secret {uri}: reading {}", path.display()));
    }
    bail!("unsupported secret URI {uri:?}: expected env://NAME or file://PATH")
}

/// Hands a value read here to the engine as `setSecret`. The value travels as a GraphQL
/// variable, so no query text (which engines may log) ever holds it; errors name the secret,
/// never the value.
async fn set_secret(client: &Client, name: &str, value: Vec<u8>) -> anyhow::Result<String> {
    let plaintext = String::from_utf8(value)
        .map_err(|_| anyhow::anyhow!("secret {name:?} is not UTF-8 text, which setSecret needs"))?;
    let body = json!({
        "query": "query($name: String!, $plaintext: String!) { setSecret(name: $name, plaintext: $plaintext) { id } }",
        "variables": { "name": name, "plaintext": plaintext },
    });
    let (status, body) = client
        .send(
            hyper::Method::POST,
            "/query",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await?;
    let answer: Value = serde_json::from_slice(&body)
        .with_context(|| format!("the engine answered setSecret with HTTP {status}, not JSON"))?;
    if let Some(message) = answer["errors"][0]["message"].as_str() {
        bail!("{message}");
    }
    answer["data"]["setSecret"]["id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("the engine's setSecret answer has no ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(q: &str) -> HostCall {
        match scan(q) {
            HostQuery::Call(c) => c,
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn sdk_shapes_are_recognised() {
        // Python (aliases everywhere) and TypeScript, as captured.
        let py = call(
            "{\n  host {\n    directory: directory(path: \".\") {\n      id: id\n    }\n  }\n}",
        );
        assert_eq!(
            py.object,
            HostObject::Directory {
                path: ".".into(),
                include: vec![],
                exclude: vec![]
            }
        );
        let ts = call("\n      { host  { directory (path: \".\") { id  } } }\n    ");
        assert_eq!(ts.object, py.object);
        assert_eq!(
            ts.answer("X"),
            json!({"data": {"host": {"directory": {"id": "X"}}}})
        );
        let c = call(
            r#"query Q { h: host { d: directory(path: "a\"b", include: ["*.txt", "sub/**"], exclude: "x", noCache: true) { i: id } } }"#,
        );
        assert_eq!(
            c.object,
            HostObject::Directory {
                path: "a\"b".into(),
                include: vec!["*.txt".into(), "sub/**".into()],
                exclude: vec!["x".into()]
            }
        );
        assert_eq!(c.answer("X"), json!({"data": {"h": {"d": {"i": "X"}}}}));
        assert_eq!(c.forward, None);
        let f = call(
            r#"{ host { d: directory(path: ".") { entries  file(path: "x") { contents } } } }"#,
        );
        assert_eq!(
            f.forward.as_deref(),
            Some(r#"{ entries  file(path: "x") { contents } }"#)
        );
        assert!(matches!(
            scan(r#"query($p: String!) { host { directory(path: ".") { entries(path: $p) } } }"#),
            HostQuery::Unsupported(_)
        ));
        assert_eq!(
            call(r#"{ host { file(path: "/etc/hostname") { id } } }"#).object,
            HostObject::File {
                path: "/etc/hostname".into()
            }
        );
    }

    #[test]
    fn client_secrets_are_recognised() {
        // As the Python SDK sends them (aliases) and as the TypeScript SDK does.
        let py = call("{\n  secret: secret(uri: \"env://TOKEN\") {\n    id: id\n  }\n}");
        assert_eq!(
            py.object,
            HostObject::SecretUri {
                uri: "env://TOKEN".into()
            }
        );
        assert_eq!(py.answer("S"), json!({"data": {"secret": {"id": "S"}}}));
        let ts = call(r#"{ s: secret (uri: "file://tok.txt") { id } }"#);
        assert_eq!(ts.answer("S"), json!({"data": {"s": {"id": "S"}}}));
        let chained = call(r#"{ secret(uri: "env://T") { plaintext } }"#);
        assert_eq!(chained.forward.as_deref(), Some("{ plaintext }"));
        let file = call(r#"{ host { setSecretFile(name: "k", path: "key.pem") { id } } }"#);
        assert_eq!(
            file.object,
            HostObject::SecretFile {
                name: "k".into(),
                path: "key.pem".into()
            }
        );
        assert_eq!(
            file.answer("S"),
            json!({"data": {"host": {"setSecretFile": {"id": "S"}}}})
        );
        // A secret ID passed as an argument is not a client secret.
        for q in [
            r#"{ container { withSecretVariable(name: "A", secret: "xyz") { id } } }"#,
            r#"{ setSecret(name: "secret", plaintext: "p") { id } }"#,
        ] {
            assert_eq!(scan(q), HostQuery::NotHost, "{q}");
        }
        for q in [
            r#"{ secret(uri: "env://A") { id } version }"#,
            r#"{ secret { id } }"#,
            r#"{ host { setSecretFile(path: "x") { id } } }"#,
        ] {
            assert!(
                matches!(scan(q), HostQuery::Unsupported(_) | HostQuery::NotHost),
                "{q}"
            );
        }
        assert!(matches!(
            scan(r#"{ secret(uri: "env://A") { id } }"#),
            HostQuery::Call(_)
        ));
    }

    #[test]
    fn secret_uris_read_this_machine() {
        std::env::set_var("DAGGER_CLI_TEST_SECRET", "v1");
        assert_eq!(
            read_secret_uri("env://DAGGER_CLI_TEST_SECRET").unwrap(),
            b"v1"
        );
        let err = read_secret_uri("env://DAGGER_CLI_TEST_NOT_SET").unwrap_err();
        assert!(format!("{err:#}").contains("not set"), "{err:#}");
        let path = std::env::temp_dir().join(format!("dagger-cli-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file").unwrap();
        let read = read_secret_uri(&format!("file://{}", path.display()));
        let _ = std::fs::remove_file(&path);
        assert_eq!(read.unwrap(), b"from-file");
        assert!(read_secret_uri("vault://x").is_err());
    }

    #[test]
    fn other_documents_are_forwarded() {
        for q in [
            "{ version }",
            r#"{ container { from(address: "alpine") { withEnvVariable(name: "host", value: "host") { id } } } }"#,
            r#"{ directory { withNewFile(path: "host", contents: "x") { id } } }"#,
            "mutation { host }",
            "{ unterminated \"host",
        ] {
            assert_eq!(scan(q), HostQuery::NotHost, "{q}");
        }
    }

    #[test]
    fn other_host_uses_are_refused_clearly() {
        for (q, what) in [
            (r#"{ host { findUp(name: "x") } }"#, "Host.findUp"),
            (
                r#"{ host { directory(path: $p) { id } } }"#,
                "argument path",
            ),
            (
                r#"{ host { directory(path: ".", gitignore: true) { id } } }"#,
                "argument gitignore",
            ),
            (
                r#"{ version host { directory(path: ".") { id } } }"#,
                "other fields",
            ),
            (
                r#"{ host { directory(path: ".") { id } file(path: "x") { id } } }"#,
                "several",
            ),
        ] {
            match scan(q) {
                HostQuery::Unsupported(m) => assert!(m.contains(what), "{q}: {m}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    fn names(tar: &[u8]) -> Vec<(String, tar::EntryType, Option<String>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn packing_filters_keeps_links_and_is_deterministic() {
        let d = std::env::temp_dir().join(format!("dagger-host-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub/deep")).unwrap();
        std::fs::create_dir_all(d.join("skip")).unwrap();
        std::fs::write(d.join("a.txt"), "a").unwrap();
        std::fs::write(d.join("b.log"), "b").unwrap();
        std::fs::write(d.join("sub/deep/c.txt"), "c").unwrap();
        std::fs::write(d.join("skip/d.txt"), "d").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link.txt")).unwrap();
        let all = pack_directory(&d, &[], &[]).unwrap();
        assert_eq!(all, pack_directory(&d, &[], &[]).unwrap());
        let got = names(&pack_directory(&d, &["**/*.txt".into()], &["skip".into()]).unwrap());
        let simple: Vec<(&str, Option<&str>)> = got
            .iter()
            .map(|(n, _, l)| (n.as_str(), l.as_deref()))
            .collect();
        assert_eq!(
            simple,
            [
                ("a.txt", None),
                ("link.txt", Some("/etc/passwd")),
                ("sub/", None),
                ("sub/deep/", None),
                ("sub/deep/c.txt", None),
            ]
        );
        assert_eq!(got[1].1, tar::EntryType::Symlink);
        let (name, tar) = pack_file(&d.join("a.txt")).unwrap();
        assert_eq!(name, "a.txt");
        assert_eq!(names(&tar).len(), 1);
        std::fs::write(d.join(".wh.x"), "").unwrap();
        assert!(pack_directory(&d, &[], &[]).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
