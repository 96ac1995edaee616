//! Serialisation of rendered documents: mapping keys sorted at every level, YAML streams
//! separated by `---`, JSON pretty-printed with a final newline. Sorting here (rather than
//! relying on the map type) keeps the output identical whatever serde_json features another
//! crate of the build turns on.

use serde_json::{Map, Value};

use crate::RenderedFile;

/// `v` with every object's keys in sorted order.
pub(crate) fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, sorted(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// One YAML document.
pub(crate) fn yaml(doc: &Value) -> String {
    // Invariant: a serde_json::Value holds only strings, finite numbers, booleans, nulls, arrays
    // and string-keyed maps, all of which YAML represents.
    yaml_serde::to_string(&sorted(doc.clone())).expect("a JSON value always serialises to YAML")
}

/// A YAML stream of several documents.
pub(crate) fn yaml_stream(docs: &[Value]) -> String {
    docs.iter().map(yaml).collect::<Vec<_>>().join("---\n")
}

/// Pretty JSON with sorted keys and a final newline.
pub(crate) fn json(doc: &Value) -> String {
    // Invariant: as in `yaml`; serde_json never fails on its own Value.
    let mut s = serde_json::to_string_pretty(&sorted(doc.clone())).expect("a JSON value always serialises");
    s.push('\n');
    s
}

/// A public file.
pub(crate) fn file(path: impl Into<String>, contents: String) -> RenderedFile {
    RenderedFile { path: path.into(), contents, secret: false }
}

/// A file holding private key material.
pub(crate) fn secret_file(path: impl Into<String>, contents: String) -> RenderedFile {
    RenderedFile { path: path.into(), contents, secret: true }
}
