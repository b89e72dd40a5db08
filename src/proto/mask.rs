//! Client-to-server payload masking (RFC 6455 §5.3).
//!
//! Every byte `i` of a client frame's payload is XORed with `mask[i % 4]`. Frames are often
//! unmasked in several pieces (a streamed payload arrives over many reads), so the caller
//! passes the position of `buf[0]` inside the frame payload and masking resumes in phase.

/// XORs `buf` with the 4-byte masking key, where `buf[0]` sits at byte `offset` of the frame
/// payload. Applying it twice restores the input.
///
/// Works a word (8 bytes) at a time: the key is rotated to the right phase once and repeated
/// into a `u64`, which keeps the phase across words because 8 is a multiple of 4. Only the
/// tail shorter than a word goes byte by byte.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let phase = offset % 4;
    let rotated = [
        mask[phase],
        mask[(phase + 1) % 4],
        mask[(phase + 2) % 4],
        mask[(phase + 3) % 4],
    ];
    let mut key8 = [0u8; 8];
    key8[..4].copy_from_slice(&rotated);
    key8[4..].copy_from_slice(&rotated);
    let word_key = u64::from_ne_bytes(key8);

    // Two words per step: lets the compiler use 16-byte vector XORs.
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let (a, b) = chunk.split_at_mut(8);
        xor_word(a, word_key);
        xor_word(b, word_key);
    }
    let rest = chunks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        xor_word(word, word_key);
    }
    // The remainder starts at a multiple of 8 from `buf[0]`, so the rotated key's phase is 0.
    for (byte, key) in words
        .into_remainder()
        .iter_mut()
        .zip(rotated.iter().cycle())
    {
        *byte ^= key;
    }
}

#[inline(always)]
fn xor_word(word: &mut [u8], key: u64) {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(word);
    let value = u64::from_ne_bytes(bytes) ^ key;
    word.copy_from_slice(&value.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= mask[(offset + i) % 4];
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn matches_naive_for_all_offsets_and_small_lengths() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..100 {
            for offset in 0..9 {
                // Also vary the start inside a larger buffer, so alignment varies too.
                for start in 0..3 {
                    let mut fast = pattern(len + start);
                    let mut slow = fast.clone();
                    apply_mask(&mut fast[start..], mask, offset);
                    naive(&mut slow[start..], mask, offset);
                    assert_eq!(fast, slow, "len {len} offset {offset} start {start}");
                }
            }
        }
    }

    #[test]
    fn matches_naive_for_large_buffers() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        for len in [4096, 65_536 + 3, 1 << 20] {
            for offset in [0, 1, 2, 3, 1001] {
                let mut fast = pattern(len);
                let mut slow = fast.clone();
                apply_mask(&mut fast, mask, offset);
                naive(&mut slow, mask, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn resumes_across_chunks() {
        let mask = [1, 2, 3, 4];
        let original = pattern(1000);
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for split in [1, 3, 7, 8, 13, 64, 999] {
            let mut pieces = original.clone();
            let mut pos = 0;
            while pos < pieces.len() {
                let end = (pos + split).min(pieces.len());
                apply_mask(&mut pieces[pos..end], mask, pos);
                pos = end;
            }
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    #[test]
    fn involution() {
        let mask = [9, 8, 7, 6];
        let original = pattern(333);
        let mut buf = original.clone();
        apply_mask(&mut buf, mask, 5);
        apply_mask(&mut buf, mask, 5);
        assert_eq!(buf, original);
    }
}
