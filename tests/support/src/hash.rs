//! A 64-bit content hash: word-wise multiply-rotate with a final avalanche. Not cryptographic,
//! but any real corruption, stale block or zeroed range changes it, and it can be fed in pieces
//! (a large file is hashed without holding it in memory).

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The hash of a byte stream fed in any number of pieces; the same bytes give the same hash
/// however they are split.
#[derive(Clone, Debug)]
pub struct ContentHash {
    h: u64,
    len: u64,
    /// Bytes of an incomplete 8-byte word, carried to the next `update`.
    tail: [u8; 8],
    tail_len: usize,
}

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash::new()
    }
}

impl ContentHash {
    pub fn new() -> ContentHash {
        ContentHash {
            h: 0x243F_6A88_85A3_08D3,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.h = (self.h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let n = (8 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + n].copy_from_slice(&data[..n]);
            self.tail_len += n;
            data = &data[n..];
            if self.tail_len < 8 {
                return;
            }
            self.word(self.tail);
            self.tail_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for c in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(w);
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.h;
        for &b in &self.tail[..self.tail_len] {
            h = (h.rotate_left(23) ^ u64::from(b)).wrapping_mul(K);
        }
        h = (h ^ self.len).wrapping_mul(K);
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    }
}

/// The content hash of `data` in one piece.
pub fn hash(data: &[u8]) -> u64 {
    let mut h = ContentHash::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_sees_length_and_every_byte() {
        let a = vec![0u8; 4096];
        let mut b = a.clone();
        assert_ne!(hash(&a), hash(&a[..4095]));
        assert_ne!(hash(&[]), hash(&[0]));
        for i in [0, 7, 8, 4095] {
            b[i] = 1;
            assert_ne!(hash(&a), hash(&b), "byte {i}");
            b[i] = 0;
        }
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let data = crate::pattern(3, 1000);
        let whole = hash(&data);
        for cut in [0, 1, 5, 8, 13, 999, 1000] {
            for step in [1, 3, 8, 64] {
                let mut h = ContentHash::new();
                h.update(&data[..cut]);
                for piece in data[cut..].chunks(step) {
                    h.update(piece);
                }
                assert_eq!(h.finish(), whole, "cut {cut} step {step}");
            }
        }
    }
}
