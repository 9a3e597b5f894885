//! Maps byte offsets and key paths in a TOML document to line numbers and dotted key names,
//! so every configuration error and warning can say where it is.

use toml_edit::{ImDocument, Item, Table, Value};

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

    /// The dotted path of the innermost key whose value contains `offset`.
    pub(crate) fn key_at(&self, offset: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let mut path = Vec::new();
        table_key_at(doc.as_table(), offset, &mut path);
        (!path.is_empty()).then(|| path.join("."))
    }

    /// The line where the key at `path` is written (serde_ignored's path segments; array
    /// elements are numeric segments).
    pub(crate) fn line_of_key(&self, path: &[String]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        offset_in_table(doc.as_table(), path, None).map(|o| self.line_of(o))
    }
}

fn offset_in_table(t: &Table, path: &[String], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = path.split_first() else {
        return best;
    };
    match t.get_key_value(seg) {
        Some((k, v)) => offset_in_item(v, rest, k.span().map(|s| s.start).or(best)),
        None => best,
    }
}

fn offset_in_item(item: &Item, path: &[String], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = path.split_first() else {
        return best;
    };
    match item {
        Item::Table(t) => offset_in_table(t, path, best),
        Item::Value(Value::InlineTable(t)) => match t.get_key_value(seg) {
            Some((k, v)) => offset_in_item(v, rest, k.span().map(|s| s.start).or(best)),
            None => best,
        },
        Item::ArrayOfTables(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
            Some(t) => offset_in_table(t, rest, t.span().map(|s| s.start).or(best)),
            None => best,
        },
        _ => best,
    }
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn table_key_at(table: &Table, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, item) in table.iter() {
        let key_span = table.key(key).and_then(|k| k.span());
        match item {
            Item::Table(t) => {
                path.push(key.to_string());
                if table_key_at(t, offset, path) {
                    return true;
                }
                path.pop();
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(format!("{key}[{i}]"));
                    if table_key_at(t, offset, path) || contains(t.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
            }
            Item::Value(v) => {
                if contains(v.span(), offset) || contains(key_span, offset) {
                    path.push(key.to_string());
                    if let Value::InlineTable(it) = v {
                        for (k, iv) in it.iter() {
                            if contains(iv.span(), offset) {
                                path.push(k.to_string());
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

    #[test]
    fn line_of_key_path() {
        let l = Locator::new(DOC);
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(l.line_of_key(&p("debug")), Some(1));
        assert_eq!(l.line_of_key(&p("worker.oci.gckeepstorage")), Some(4));
        assert_eq!(l.line_of_key(&p("worker.oci.gcpolicy.0.foo")), Some(8));
    }
}
