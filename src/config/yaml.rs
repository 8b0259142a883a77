//! YAML text → a JSON value tree plus the line and column of every node, so that every problem
//! in a config file — syntax, wrong type, unknown key, bad value — can name both its YAML path
//! and where it is. serde-saphyr does the parsing (it is already in the tree through kube);
//! serde derive does the typing, one problem at a time, and [`deserialize_all`] keeps going past
//! each problem so the user sees them all at once.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `pools[1].scaler.max_replicas`; empty for the document itself.
    pub path: String,
    /// 1-based line and column, when known.
    pub location: Option<(u64, u64)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.location {
            write!(f, "line {line}, column {column}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Where each node of the document is, by YAML path.
#[derive(Debug, Default)]
pub struct Locations(HashMap<String, (u64, u64)>);

impl Locations {
    /// The location of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<(u64, u64)> {
        let mut path = path;
        loop {
            if let Some(location) = self.0.get(path) {
                return Some(*location);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Whether the file itself sets `path` (not a default).
    pub fn contains(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    pub fn error(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let path = path.into();
        ConfigError {
            location: self.find(&path),
            path,
            message: message.into(),
        }
    }
}

/// A parsed YAML node with the spans of its children.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

fn location_of<T>(spanned: &Spanned<T>) -> (u64, u64) {
    (spanned.referenced.line(), spanned.referenced.column())
}

/// Parses YAML text into a JSON value and the location of every node. A syntax error comes back
/// as one [`ConfigError`] with its line and column.
pub fn parse(text: &str) -> Result<(Value, Locations), ConfigError> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok((Value::Object(Map::new()), Locations::default()));
    }
    let root: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| ConfigError {
        path: String::new(),
        location: e.location().map(|l| (l.line(), l.column())),
        message: format!("YAML syntax error: {}", first_line(&e.to_string())),
    })?;
    let mut locations = Locations::default();
    locations.0.insert(String::new(), location_of(&root));
    let mut errors = Vec::new();
    let value = to_json(root.value, "", &mut locations, &mut errors);
    match errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok((value, locations)),
    }
}

/// serde-saphyr's message repeats the location we already show; keep only what went wrong.
fn first_line(message: &str) -> &str {
    let line = message.lines().next().unwrap_or(message);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, what)) => what,
        None => line,
    }
}

fn to_json(node: Node, path: &str, locs: &mut Locations, errors: &mut Vec<ConfigError>) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::UInt(u) => Value::from(u),
        Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let child = format!("{path}[{i}]");
                    locs.0.insert(child.clone(), location_of(&item));
                    to_json(item.value, &child, locs, errors)
                })
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let child = if path.is_empty() {
                    key.value.clone()
                } else {
                    format!("{path}.{}", key.value)
                };
                let at = location_of(&key);
                if map.contains_key(&key.value) {
                    errors.push(ConfigError {
                        path: child.clone(),
                        location: Some(at),
                        message: "duplicate key".into(),
                    });
                }
                locs.0.insert(child.clone(), at);
                let value = to_json(value.value, &child, locs, errors);
                map.insert(key.value, value);
            }
            Value::Object(map)
        }
    }
}

/// Deserializes `value` into `T`, collecting every structural problem (unknown key, wrong type,
/// unknown variant) instead of stopping at the first: each failing node is reported, removed,
/// and the rest tried again, so its field falls back to its default. Returns the value built
/// from what was left and the problems found.
pub fn deserialize_all<T: DeserializeOwned>(
    mut value: Value,
    locations: &Locations,
) -> (Option<T>, Vec<ConfigError>) {
    let mut errors: Vec<ConfigError> = Vec::new();
    // Each round removes one node, so the loop ends; the bound is a guard against a bug.
    for _ in 0..1000 {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(typed) => {
                errors.sort_by_key(|e: &ConfigError| e.location);
                return (Some(typed), errors);
            }
            Err(error) => error,
        };
        let message = error.inner().to_string();
        let mut path = error.path().to_string();
        if path == "." {
            path.clear();
        }
        // serde names an unknown key in the message, with the path of the map holding it.
        if let Some(key) = unknown_field(&message)
            && !path.ends_with(&format!(".{key}"))
            && path != key
        {
            path = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
        }
        errors.push(locations.error(path.clone(), tidy(&message)));
        if !remove(&mut value, &path) {
            return (None, errors);
        }
    }
    (None, errors)
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde's messages end with the list of expected fields; keep them, but say "unknown key".
fn tidy(message: &str) -> String {
    message.replacen("unknown field", "unknown key", 1)
}

/// Removes the node at a path like `pools[0].scaler.min_replicas`; false if there is none.
fn remove(value: &mut Value, path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    let mut segments = split_path(path);
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut node = value;
    for segment in segments {
        let next = match segment {
            Segment::Key(k) => node.get_mut(k),
            Segment::Index(i) => node.get_mut(i),
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Segment::Key(k), Value::Object(map)) => map.remove(k).is_some(),
        (Segment::Index(i), Value::Array(items)) if i < items.len() => {
            // Keep indices of later items stable: replace rather than shift.
            items[i] = Value::Null;
            true
        }
        _ => false,
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Segment::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        count: u32,
        name: String,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Outer {
        items: Vec<Inner>,
        flag: bool,
    }

    #[test]
    fn locations_are_recorded_per_path() {
        let (_, locs) = parse("items:\n  - count: 1\n    name: a\nflag: true\n").unwrap();
        assert_eq!(locs.find("flag"), Some((4, 1)));
        assert_eq!(locs.find("items[0].name"), Some((3, 5)));
        // A path that does not exist falls back to its nearest ancestor.
        assert_eq!(locs.find("items[0].missing"), locs.find("items[0]"));
    }

    #[test]
    fn every_structural_problem_is_reported() {
        let text = "items:\n  - count: many\n    colour: red\n  - count: 2\nflg: true\n";
        let (value, locs) = parse(text).unwrap();
        let (outer, errors) = deserialize_all::<Outer>(value, &locs);
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{shown:#?}");
        assert!(
            shown[0].starts_with("line 2, column 5: items[0].count: invalid type"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with("line 3, column 5: items[0].colour: unknown key"),
            "{shown:#?}"
        );
        assert!(
            shown[2].starts_with("line 5, column 1: flg: unknown key"),
            "{shown:#?}"
        );
        // What was left still deserializes, with defaults where nodes were removed.
        let outer = outer.unwrap();
        assert_eq!(outer.items[0].count, 0);
        assert_eq!(outer.items[1].count, 2);
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let error = parse("pools:\n  - name: a\n   bad: [1, 2\n").unwrap_err();
        // The mis-indented key is on line 3; its unclosed flow sequence ends the text (line 4).
        assert!(matches!(error.location, Some((3..=4, 1..))), "{error}");
        assert!(error.message.starts_with("YAML syntax error"), "{error}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let error = parse("flag: true\nflag: false\n").unwrap_err();
        assert!(error.message.contains("duplicate"), "{error}");
        assert_eq!(error.location.map(|l| l.0), Some(2), "{error}");
    }

    #[test]
    fn empty_documents_are_empty_maps() {
        let (value, _) = parse("# nothing here\n\n").unwrap();
        assert_eq!(value, Value::Object(Map::new()));
    }
}
