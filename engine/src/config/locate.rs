//! Maps byte offsets and key paths in a TOML document to line numbers and dotted key names,
//! so every configuration error and warning can say where it is.

use std::fmt::Write as _;
use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path: a table key, or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySegment {
    Key(String),
    Index(usize),
}

/// Writes a key path the way users write keys: `worker.oci.gcpolicy[1].keepDuration`,
/// `registry."docker.io".mirrors`.
pub(crate) fn format_key_path(path: &[KeySegment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            KeySegment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if bare {
                    out.push_str(k);
                } else {
                    let _ = write!(out, "{k:?}");
                }
            }
            KeySegment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// Converts serde_ignored's path, dropping the wrapper steps that `Option` and `Spanned` add.
pub(crate) fn segments_of(path: &serde_ignored::Path) -> Vec<KeySegment> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut v = segments_of(parent);
            v.push(KeySegment::Index(*index));
            v
        }
        Path::Map { parent, key } => {
            let mut v = segments_of(parent);
            if !key.starts_with("$__serde_spanned_private") {
                v.push(KeySegment::Key(key.clone()));
            }
            v
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments_of(parent),
    }
}

pub(crate) struct Locator<'a> {
    raw: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(raw: &'a str) -> Self {
        Locator {
            raw,
            doc: ImDocument::parse(raw).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.raw[..offset.min(self.raw.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// The path of the innermost key whose value contains `offset`.
    pub(crate) fn key_at(&self, offset: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let mut path = Vec::new();
        table_key_at(doc.as_table(), offset, &mut path);
        (!path.is_empty()).then(|| format_key_path(&path))
    }

    /// The line where the key at `path` is written (serde_ignored's path segments; array
    /// elements are numeric segments).
    pub(crate) fn line_of_key(&self, path: &[KeySegment]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        offset_in_table(doc.as_table(), path, None).map(|o| self.line_of(o))
    }
}

fn offset_in_table(t: &Table, path: &[KeySegment], best: Option<usize>) -> Option<usize> {
    let Some((KeySegment::Key(seg), rest)) = path.split_first() else {
        return best;
    };
    match t.get_key_value(seg) {
        Some((k, v)) => offset_in_item(v, rest, k.span().map(|s| s.start).or(best)),
        None => best,
    }
}

fn offset_in_item(item: &Item, path: &[KeySegment], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = path.split_first() else {
        return best;
    };
    match (item, seg) {
        (Item::Table(t), KeySegment::Key(_)) => offset_in_table(t, path, best),
        (Item::Value(Value::InlineTable(t)), KeySegment::Key(k)) => match t.get_key_value(k) {
            Some((k, v)) => offset_in_item(v, rest, k.span().map(|s| s.start).or(best)),
            None => best,
        },
        (Item::ArrayOfTables(a), KeySegment::Index(i)) => match a.get(*i) {
            Some(t) => offset_in_table(t, rest, t.span().map(|s| s.start).or(best)),
            None => best,
        },
        _ => best,
    }
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn table_key_at(table: &Table, offset: usize, path: &mut Vec<KeySegment>) -> bool {
    for (key, item) in table.iter() {
        let key_span = table.key(key).and_then(|k| k.span());
        match item {
            Item::Table(t) => {
                path.push(KeySegment::Key(key.to_string()));
                if table_key_at(t, offset, path) {
                    return true;
                }
                path.pop();
            }
            Item::ArrayOfTables(a) => {
                path.push(KeySegment::Key(key.to_string()));
                for (i, t) in a.iter().enumerate() {
                    path.push(KeySegment::Index(i));
                    if table_key_at(t, offset, path) || contains(t.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
                path.pop();
            }
            Item::Value(v) => {
                if contains(v.span(), offset) || contains(key_span, offset) {
                    path.push(KeySegment::Key(key.to_string()));
                    if let Value::InlineTable(it) = v {
                        for (k, iv) in it.iter() {
                            if contains(iv.span(), offset) {
                                path.push(KeySegment::Key(k.to_string()));
                                break;
                            }
                        }
                    }
                    return true;
                }
            }
            Item::None => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "debug = true\n\n[worker.oci]\ngckeepstorage = \"x\"\n\n[[worker.oci.gcpolicy]]\nkeepBytes = 1\nfoo = 2\n";

    #[test]
    fn key_at_offset() {
        let l = Locator::new(DOC);
        let off = DOC.find("\"x\"").unwrap();
        assert_eq!(l.key_at(off).as_deref(), Some("worker.oci.gckeepstorage"));
        assert_eq!(l.line_of(off), 4);
        let off = DOC.find("2\n").unwrap();
        assert_eq!(l.key_at(off).as_deref(), Some("worker.oci.gcpolicy[0].foo"));
    }

    fn k(s: &str) -> KeySegment {
        KeySegment::Key(s.into())
    }

    #[test]
    fn line_of_key_path() {
        let l = Locator::new(DOC);
        assert_eq!(l.line_of_key(&[k("debug")]), Some(1));
        assert_eq!(
            l.line_of_key(&[k("worker"), k("oci"), k("gckeepstorage")]),
            Some(4)
        );
        let policy = [
            k("worker"),
            k("oci"),
            k("gcpolicy"),
            KeySegment::Index(0),
            k("foo"),
        ];
        assert_eq!(l.line_of_key(&policy), Some(8));
        assert_eq!(format_key_path(&policy), "worker.oci.gcpolicy[0].foo");
        let reg = "[registry.\"docker.io\"]\nhttp = true\n";
        let l = Locator::new(reg);
        let path = [k("registry"), k("docker.io"), k("http")];
        assert_eq!(l.line_of_key(&path), Some(2));
        assert_eq!(format_key_path(&path), "registry.\"docker.io\".http");
        assert_eq!(
            l.key_at(reg.find("true").unwrap()).as_deref(),
            Some("registry.\"docker.io\".http")
        );
    }
}
