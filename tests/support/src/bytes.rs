//! Deterministic file content, and where two byte strings part.

/// `len` bytes of the pattern made with `seed`, from its start: `pattern_at(seed, 0, len)`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    pattern_at(seed, 0, len)
}

/// Bytes `off..off + len` of the pattern made with `seed`. Each byte depends on the seed and its
/// offset only, so any slice of a file written with the pattern can be checked on its own, and
/// bytes moved to another offset or taken from another seed do not match. No byte is zero, so
/// pattern data never reads like a hole.
pub fn pattern_at(seed: u64, off: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let end = off + len as u64;
    let mut pos = off;
    while pos < end {
        let word = mix(seed, pos / 8).to_le_bytes();
        let from = (pos % 8) as usize;
        let to = (end - (pos - from as u64)).min(8) as usize;
        out.extend(word[from..to].iter().map(|b| b | 1));
        pos += (to - from) as u64;
    }
    out
}

/// The 8 pattern bytes of word `word` (bytes `8 * word ..`): splitmix64's finaliser over the seed
/// and the word index.
fn mix(seed: u64, word: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ word.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Write `data` into `buf` at `off`, growing it with zeros: what a file write does to a model of
/// the file's bytes (a write past the end leaves a hole that reads as zeros).
pub fn write_into(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    let end = off + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[off..end].copy_from_slice(data);
}

/// The first offset at which `got` and `want` differ: the first differing byte, or the shorter
/// length when one is a prefix of the other; `None` when they are equal.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or_else(|| (got.len() != want.len()).then(|| got.len().min(want.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_slice_of_the_pattern_is_the_pattern_there() {
        let whole = pattern(5, 100);
        for off in 0..20u64 {
            for len in [0, 1, 7, 8, 9, 33] {
                let o = off as usize;
                assert_eq!(pattern_at(5, off, len), whole[o..o + len], "{off}+{len}");
            }
        }
    }

    #[test]
    fn seeds_and_offsets_give_different_bytes_and_never_zero() {
        let a = pattern(1, 4096);
        let b = pattern(2, 4096);
        assert!(a.iter().chain(&b).all(|&x| x != 0));
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 64);
        // A block moved by 8 bytes does not match itself.
        assert_ne!(a[8..4096], pattern_at(1, 16, 4088)[..]);
    }

    #[test]
    fn write_into_fills_holes_with_zeros() {
        let mut m = vec![1u8; 2];
        write_into(&mut m, 4, &[9, 9]);
        assert_eq!(m, [1, 1, 0, 0, 9, 9]);
        write_into(&mut m, 1, &[5]);
        assert_eq!(m, [1, 5, 0, 0, 9, 9]);
    }

    #[test]
    fn first_difference_names_the_byte_or_the_shorter_length() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abd", b"abc"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"abc", b""), Some(0));
    }
}
