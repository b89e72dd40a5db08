//! Read-only views of simd-json tape nodes ([`simd_json::Node`]): the envelope's `payload`
//! and its members are slices of the tape the parser filled, never a value tree. Strings on
//! the tape are already unescaped (in place, in the frame buffer), numbers already parsed.
//!
//! A view writes itself back as JSON ([`RawJson::write_json`]) by walking its nodes in order
//! with an explicit stack (no recursion, so no depth can overflow the thread's stack);
//! strings go through [`super::write_json_str`].

use simd_json::{Node, StaticNode};
use smallvec::SmallVec;
use std::borrow::Cow;

/// One JSON value on a simd-json tape: its header node and every node nested in it.
/// (Named `RawJson` for continuity with the gateway's API; the text is re-encoded from the
/// tape, not the client's bytes.)
#[derive(Clone, Copy)]
pub struct RawJson<'t> {
    nodes: &'t [Node<'t>],
    /// The text the tape came from had no backslash at all, so no string on it contains a
    /// character JSON needs escaped (`"`, `\`, control characters can only be written
    /// escaped): strings are then written back between quotes as they are.
    plain: bool,
}

impl PartialEq for RawJson<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

/// Number of tape nodes a value starting at `node` spans (itself included).
#[inline]
pub(super) fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

impl std::fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawJson({})", self.to_json())
    }
}

impl std::fmt::Display for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// The nodes of [`RawJson::NULL`].
const NULL_NODES: [Node<'static>; 1] = [Node::Static(StaticNode::Null)];

impl RawJson<'static> {
    /// `null`.
    pub const NULL: Self = Self {
        nodes: &NULL_NODES,
        plain: true,
    };
}

impl<'t> RawJson<'t> {
    /// The value whose header is `nodes[0]` (`nodes` may run on past it). `None` when
    /// `nodes` is empty or shorter than the value.
    #[must_use]
    pub fn from_nodes(nodes: &'t [Node<'t>]) -> Option<Self> {
        let len = span(nodes.first()?);
        nodes.get(..len).map(|nodes| Self {
            nodes,
            plain: false,
        })
    }

    /// [`Self::from_nodes`] for a tape filled from a text without any backslash (its strings
    /// are then written back without an escape check).
    pub(super) fn from_plain_nodes(nodes: &'t [Node<'t>], plain: bool) -> Option<Self> {
        Self::from_nodes(nodes).map(|v| Self { plain, ..v })
    }

    /// Whether the strings can be written without an escape check (see the field).
    pub(super) fn is_plain(&self) -> bool {
        self.plain
    }

    /// The value's tape nodes (header first).
    #[must_use]
    pub fn nodes(&self) -> &'t [Node<'t>] {
        self.nodes
    }

    fn head(&self) -> Option<&'t Node<'t>> {
        self.nodes.first()
    }

    /// Whether the value is an object.
    #[must_use]
    pub fn is_object(&self) -> bool {
        matches!(self.head(), Some(Node::Object { .. }))
    }

    /// Whether the value is an array.
    #[must_use]
    pub fn is_array(&self) -> bool {
        matches!(self.head(), Some(Node::Array { .. }))
    }

    /// Whether the value is `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self.head(), Some(Node::Static(StaticNode::Null)))
    }

    /// The string's (already unescaped) text when the value is a string.
    #[must_use]
    pub fn as_str(&self) -> Option<Cow<'t, str>> {
        self.as_plain_str().map(Cow::Borrowed)
    }

    /// The string's text when the value is a string.
    #[must_use]
    pub fn as_plain_str(&self) -> Option<&'t str> {
        match self.head() {
            Some(Node::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The scalar node when the value is a number, `true`, `false` or `null`.
    #[must_use]
    pub fn as_static(&self) -> Option<StaticNode> {
        match self.head() {
            Some(Node::Static(s)) => Some(*s),
            _ => None,
        }
    }

    /// The first member named `key` when the value is an object.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<RawJson<'t>> {
        self.members()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }

    /// The members of an object, in the client's order (repeats kept); empty otherwise.
    #[must_use]
    pub fn members(&self) -> Members<'t> {
        match self.head() {
            Some(Node::Object { len, .. }) => Members {
                rest: self.nodes.get(1..).unwrap_or_default(),
                left: *len,
                plain: self.plain,
            },
            _ => Members {
                rest: &[],
                left: 0,
                plain: self.plain,
            },
        }
    }

    /// The items of an array; empty otherwise.
    #[must_use]
    pub fn elements(&self) -> Elements<'t> {
        match self.head() {
            Some(Node::Array { len, .. }) => Elements {
                rest: self.nodes.get(1..).unwrap_or_default(),
                left: *len,
                plain: self.plain,
            },
            _ => Elements {
                rest: &[],
                left: 0,
                plain: self.plain,
            },
        }
    }

    /// Appends the value as JSON text. Strings are re-escaped by
    /// [`super::write_json_str`]; integers are written as parsed, floats in their shortest
    /// round-trip form.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write_nodes(out, self.nodes, self.plain);
    }

    /// The value as JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.nodes.len() * 8);
        self.write_json(&mut out);
        // Every byte written is ASCII JSON syntax or comes from a `&str`.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Appends a tape string as a JSON string literal: as it is between quotes when `plain`
/// (see [`RawJson`]), else through [`super::write_json_str`].
#[inline(always)]
pub(super) fn write_tape_str(out: &mut Vec<u8>, s: &str, plain: bool) {
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        super::write_json_str(out, s);
    }
}

/// Writes the values laid out one after another in `nodes` (normally exactly one).
pub(super) fn write_nodes(out: &mut Vec<u8>, nodes: &[Node<'_>], plain: bool) {
    // Per open container: (members or items left, is an object).
    let mut open: SmallVec<[(usize, bool); 32]> = SmallVec::new();
    // Whether the next node of the innermost open object is a key.
    let mut at_key = false;
    for node in nodes {
        if let Some((left, is_object)) = open.last_mut() {
            if *is_object && at_key {
                if let Node::String(k) = node {
                    write_tape_str(out, k, plain);
                    out.push(b':');
                }
                at_key = false;
                continue;
            }
            *left -= 1;
        }
        match node {
            Node::String(s) => write_tape_str(out, s, plain),
            Node::Static(s) => write_static(out, *s),
            Node::Object { len, .. } => {
                out.push(b'{');
                if *len > 0 {
                    open.push((*len, true));
                    at_key = true;
                    continue;
                }
                out.push(b'}');
            }
            Node::Array { len, .. } => {
                out.push(b'[');
                if *len > 0 {
                    open.push((*len, false));
                    at_key = false;
                    continue;
                }
                out.push(b']');
            }
        }
        // A value ended: close every container it completed, then separate.
        while let Some(&(left, is_object)) = open.last() {
            if left > 0 {
                out.push(b',');
                at_key = is_object;
                break;
            }
            out.push(if is_object { b'}' } else { b']' });
            open.pop();
        }
    }
}

/// Appends a number, boolean or null.
fn write_static(out: &mut Vec<u8>, s: StaticNode) {
    match s {
        StaticNode::Null => out.extend_from_slice(b"null"),
        StaticNode::Bool(true) => out.extend_from_slice(b"true"),
        StaticNode::Bool(false) => out.extend_from_slice(b"false"),
        StaticNode::I64(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        StaticNode::U64(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        StaticNode::F64(f) => {
            if f.is_finite() {
                out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
            } else {
                // simd-json refuses numbers beyond f64; never reached.
                out.extend_from_slice(b"null");
            }
        }
    }
}

/// The members of an object view: `(key, value)`.
#[derive(Debug, Clone)]
pub struct Members<'t> {
    rest: &'t [Node<'t>],
    left: usize,
    plain: bool,
}

impl<'t> Iterator for Members<'t> {
    type Item = (&'t str, RawJson<'t>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (key, after) = self.rest.split_first()?;
        let Node::String(key) = key else {
            return None;
        };
        let value = RawJson::from_plain_nodes(after, self.plain)?;
        self.rest = after.get(value.nodes.len()..).unwrap_or_default();
        Some((key, value))
    }
}

/// The items of an array view.
#[derive(Debug, Clone)]
pub struct Elements<'t> {
    rest: &'t [Node<'t>],
    left: usize,
    plain: bool,
}

impl<'t> Iterator for Elements<'t> {
    type Item = RawJson<'t>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let value = RawJson::from_plain_nodes(self.rest, self.plain)?;
        self.rest = self.rest.get(value.nodes.len()..).unwrap_or_default();
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let mut buf = text.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut buf).expect("valid JSON");
        RawJson::from_nodes(&tape.0).expect("one value").to_json()
    }

    #[test]
    fn writes_what_serde_reads_back() {
        for text in [
            r#"{}"#,
            r#"[]"#,
            r#"{"a":[1,{"b":[]},{}],"c":{"d":{"e":[[[]]]}},"f":"x\ny\"z\u0001"}"#,
            r#"[1,-2,3.5,1e300,-0.0,true,false,null,"é😀"]"#,
            r#""just a string""#,
            r#"18446744073709551615"#,
            r#"{"a":1,"a":2}"#,
            r#"[[1,2],[3,[4,[5]]],{"x":{"y":{}}}]"#,
        ] {
            let written = round_trip(text);
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            let ours: serde_json::Value = serde_json::from_str(&written)
                .unwrap_or_else(|e| panic!("{e}: {text} -> {written}"));
            assert_eq!(ours, theirs, "{text} -> {written}");
        }
        // Repeated keys stay repeated, in order.
        assert_eq!(round_trip(r#"{"a":1, "a":[2]}"#), r#"{"a":1,"a":[2]}"#);
    }

    #[test]
    fn members_elements_get() {
        let mut buf = br#"{"a":[1,"2",{"x":3}],"b":{"c":null},"a":4}"#.to_vec();
        let tape = simd_json::to_tape(&mut buf).unwrap();
        let v = RawJson::from_nodes(&tape.0).unwrap();
        assert!(v.is_object());
        let keys: Vec<&str> = v.members().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "a"]);
        let a = v.get("a").unwrap();
        assert!(a.is_array());
        assert_eq!(a.elements().count(), 3);
        assert_eq!(a.elements().nth(1).unwrap().as_str().as_deref(), Some("2"));
        assert_eq!(a.elements().nth(2).unwrap().to_json(), r#"{"x":3}"#);
        assert!(v.get("b").unwrap().get("c").unwrap().is_null());
        assert_eq!(v.get("zz"), None);
        assert_eq!(a.members().count(), 0);
    }
}
