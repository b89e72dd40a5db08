//! Helpers shared by the fuzz targets: how a fuzz input is cut into socket reads, and the
//! tungstenite differential oracle for the frame decoder (the same rules as
//! `tests/codec_differential.rs`, which checks generated inputs with a fixed seed).

pub mod frames;
pub mod json;

/// Splits an input into the reads a socket might deliver. The first `N` bytes of the fuzz
/// input choose the read sizes (cycled; `0` means "everything that is left"), so the fuzzer
/// itself explores where reads end: mid-header, mid-mask, mid-payload, mid-code-point.
#[derive(Clone, Debug)]
pub struct Reads<'a> {
    sizes: &'a [u8],
    rest: &'a [u8],
    next: usize,
}

impl<'a> Reads<'a> {
    /// Takes `n` size bytes off the front of `input`; the remainder is the byte stream.
    pub fn new(input: &'a [u8], n: usize) -> Self {
        let n = n.min(input.len());
        let (sizes, rest) = input.split_at(n);
        Reads {
            sizes,
            rest,
            next: 0,
        }
    }

    /// The whole byte stream, regardless of how it is cut.
    pub fn stream(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Reads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let size = match self.sizes.get(self.next % self.sizes.len().max(1)) {
            None | Some(0) => self.rest.len(),
            Some(&s) => usize::from(s),
        };
        self.next += 1;
        let (head, tail) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = tail;
        Some(head)
    }
}
