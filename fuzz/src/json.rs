//! An independent reading of a JSON text with serde_json that keeps what `serde_json::Value`
//! hides: repeated object keys (in order). The envelope oracle derives every rule of the spec
//! from this tree.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value with objects as ordered key/value lists (duplicates kept).
#[derive(Clone, Debug, PartialEq)]
pub enum Tree {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Tree>),
    Object(Vec<(String, Tree)>),
}

impl Tree {
    /// Nesting depth, counting each array/object level (a scalar is 0, `{}` is 1).
    pub fn depth(&self) -> usize {
        match self {
            Tree::Array(items) => 1 + items.iter().map(Tree::depth).max().unwrap_or(0),
            Tree::Object(fields) => 1 + fields.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether some object, at any level, repeats a key.
    pub fn has_duplicate_keys(&self) -> bool {
        match self {
            Tree::Array(items) => items.iter().any(Tree::has_duplicate_keys),
            Tree::Object(fields) => {
                let mut keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                keys.sort_unstable();
                keys.windows(2).any(|w| w[0] == w[1])
                    || fields.iter().any(|(_, v)| v.has_duplicate_keys())
            }
            _ => false,
        }
    }

    /// The `serde_json::Value` this tree reads as (the last of repeated keys wins).
    pub fn to_value(&self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(*b),
            Tree::Number(n) => Value::Number(n.clone()),
            Tree::String(s) => Value::String(s.clone()),
            Tree::Array(items) => Value::Array(items.iter().map(Tree::to_value).collect()),
            Tree::Object(fields) => {
                let mut map = Map::new();
                for (k, v) in fields {
                    map.insert(k.clone(), v.to_value());
                }
                Value::Object(map)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
        Ok(Tree::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Tree, E> {
        Number::from_f64(v)
            .map(Tree::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut fields = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Tree>()? {
            fields.push((k, v));
        }
        Ok(Tree::Object(fields))
    }
}

/// Parses with serde_json (its recursion limit of 128 applies).
pub fn parse(text: &[u8]) -> Option<Tree> {
    serde_json::from_slice(text).ok()
}

/// Whether the text holds an integer literal (outside strings) that fits neither `i64` nor
/// `u64`. simd-json refuses those as malformed (a documented difference: serde_json reads them
/// as floats).
pub fn has_out_of_range_integer(text: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = text.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while text
                    .get(i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let token = &text[start..i];
                let integer = !token.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
                if integer {
                    let s = std::str::from_utf8(token).unwrap_or("");
                    if s.parse::<i64>().is_err() && s.parse::<u64>().is_err() {
                        return true;
                    }
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// Equality of two JSON values, except that two floats may differ in their last bit or two:
/// simd-json does not round every long decimal literal correctly (a float with more than 19
/// significant digits can come out 1 ulp away from serde_json's correctly rounded value,
/// found by the `envelope` target; RFC 8259 §6 warns such numbers are not interoperable),
/// and the literal `-0` is the integer 0 to simd-json but -0.0 to serde_json.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) if x.is_f64() && y.is_f64() => {
                    let (p, q) = (p.to_bits() as i64, q.to_bits() as i64);
                    (p - q).abs() <= 2
                }
                // simd-json reads the literal `-0` as the integer 0, serde_json as -0.0.
                (Some(p), Some(q)) => p == q,
                _ => x == y,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
