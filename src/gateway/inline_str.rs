//! A string stored inline when short: user names live in every online user's registry entry
//! and replica record, and a `Box<str>` costs 16 bytes plus a 32-byte heap chunk for a
//! 9-byte name.

use std::fmt;
use std::ops::Deref;

/// Longest string kept inline (the type is 24 bytes: tag, length, bytes).
pub const INLINE_MAX: usize = 22;

/// An immutable string: up to [`INLINE_MAX`] bytes inline, longer ones on the heap.
#[derive(Clone)]
pub enum InlineStr {
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    Heap(Box<str>),
}

impl InlineStr {
    pub fn as_str(&self) -> &str {
        match self {
            // Only whole `str`s are stored, so the bytes are valid UTF-8; the check (a few
            // nanoseconds for a short ASCII name) keeps this safe code.
            InlineStr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            InlineStr::Heap(s) => s,
        }
    }

    /// The bytes, without `as_str`'s UTF-8 check (they were copied from a `str`).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            InlineStr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineStr::Heap(s) => s.as_bytes(),
        }
    }

    fn inline(s: &str) -> Option<Self> {
        (s.len() <= INLINE_MAX).then(|| {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            InlineStr::Inline {
                len: s.len() as u8,
                bytes,
            }
        })
    }
}

impl Default for InlineStr {
    fn default() -> Self {
        InlineStr::Inline {
            len: 0,
            bytes: [0; INLINE_MAX],
        }
    }
}

impl From<&str> for InlineStr {
    fn from(s: &str) -> Self {
        Self::inline(s).unwrap_or_else(|| InlineStr::Heap(s.into()))
    }
}

impl From<Box<str>> for InlineStr {
    /// Keeps the allocation of a long string instead of copying it.
    fn from(s: Box<str>) -> Self {
        Self::inline(&s).unwrap_or(InlineStr::Heap(s))
    }
}

impl crate::proto::envelope::JsonText for InlineStr {
    fn utf8_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Deref for InlineStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for InlineStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for InlineStr {}

impl PartialEq<str> for InlineStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for InlineStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_four_bytes() {
        assert_eq!(std::mem::size_of::<InlineStr>(), 24);
    }

    #[test]
    fn short_strings_are_inline_long_ones_on_the_heap() {
        for s in ["", "a", "user12345", "é🦀ü", &"x".repeat(INLINE_MAX)] {
            let v = InlineStr::from(s);
            assert!(matches!(v, InlineStr::Inline { .. }), "{s:?}");
            assert_eq!(v.as_str(), s);
            assert_eq!(v.as_bytes(), s.as_bytes());
            assert_eq!(&*InlineStr::from(Box::<str>::from(s)), s);
        }
        let long = "y".repeat(INLINE_MAX + 1);
        let v = InlineStr::from(long.as_str());
        assert!(matches!(v, InlineStr::Heap(_)));
        assert_eq!(&*v, long);
        assert_eq!(v.as_bytes(), long.as_bytes());
        let boxed: Box<str> = long.clone().into();
        let ptr = boxed.as_ptr();
        let v = InlineStr::from(boxed);
        assert_eq!(v.as_ptr(), ptr, "a long Box<str> is kept, not copied");
        assert_eq!(v, InlineStr::from(long.as_str()));
        assert_eq!(InlineStr::default().as_str(), "");
        assert_eq!(format!("{:?}", InlineStr::from("bob")), "\"bob\"");
    }

    #[test]
    fn multibyte_text_at_the_inline_limit() {
        // 22 bytes of 2-byte characters fit; 23 bytes do not.
        let s = "é".repeat(INLINE_MAX / 2);
        assert!(matches!(
            InlineStr::from(s.as_str()),
            InlineStr::Inline { .. }
        ));
        let t = format!("{s}a");
        assert!(matches!(InlineStr::from(t.as_str()), InlineStr::Heap(_)));
        assert_eq!(&*InlineStr::from(t.as_str()), t);
    }
}
