//! The superblock file: the store's identity and fixed parameters, written once by mkfs.
//!
//! ```text
//! offset size  field
//!      0    8  magic "COWFSSB\0"
//!      8    4  format version (u32 LE), currently 1
//!     12    4  block size in bytes (u32 LE), a power of two in 4 KiB..=64 KiB
//!     16   16  store id (random)
//!     32    8  creation time, seconds since the epoch (i64 LE)
//!     40   20  reserved, zero
//!     60    4  CRC-32C of bytes 0..60 (u32 LE)
//! ```
//! Everything that changes lives in the metadata B-tree (`meta.redb`), whose two checksummed
//! commit slots are the store's single atomic commit point.

use crate::error::{Error, Result};

pub const SUPERBLOCK_FILE: &str = "superblock";
pub const MAGIC: [u8; 8] = *b"COWFSSB\0";
pub const SUPERBLOCK_LEN: usize = 64;

const MAGIC_OFF: usize = 0;
const VERSION_OFF: usize = MAGIC_OFF + 8;
const BLOCK_SIZE_OFF: usize = VERSION_OFF + 4;
const ID_OFF: usize = BLOCK_SIZE_OFF + 4;
const CREATED_OFF: usize = ID_OFF + 16;
const RESERVED_OFF: usize = CREATED_OFF + 8;
const CRC_OFF: usize = RESERVED_OFF + 20;
const _: () = assert!(CRC_OFF + 4 == SUPERBLOCK_LEN);

/// On-disk format versions this build understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatVersion {
    V1 = 1,
}

impl TryFrom<u32> for FormatVersion {
    type Error = u32;
    fn try_from(v: u32) -> std::result::Result<Self, u32> {
        match v {
            1 => Ok(FormatVersion::V1),
            other => Err(other),
        }
    }
}

pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 65536;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: FormatVersion,
    pub block_size: u32,
    pub id: [u8; 16],
    pub created: i64,
}

impl Superblock {
    pub fn new(block_size: u32) -> Result<Superblock> {
        validate_block_size(block_size)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Superblock {
            version: FormatVersion::V1,
            block_size,
            id: crate::sys::random_id(),
            created: now.as_secs() as i64,
        })
    }

    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[MAGIC_OFF..VERSION_OFF].copy_from_slice(&MAGIC);
        b[VERSION_OFF..BLOCK_SIZE_OFF].copy_from_slice(&(self.version as u32).to_le_bytes());
        b[BLOCK_SIZE_OFF..ID_OFF].copy_from_slice(&self.block_size.to_le_bytes());
        b[ID_OFF..CREATED_OFF].copy_from_slice(&self.id);
        b[CREATED_OFF..RESERVED_OFF].copy_from_slice(&self.created.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFF]);
        b[CRC_OFF..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse a superblock; every rejection names the file and the offset of the bad field.
    pub fn from_bytes(b: &[u8]) -> Result<Superblock> {
        let bad = |offset: usize, reason: String| Error::UnsupportedFormat {
            file: SUPERBLOCK_FILE.into(),
            offset: offset as u64,
            reason,
        };
        if b.len() < SUPERBLOCK_LEN {
            return Err(bad(
                b.len(),
                format!(
                    "file is {} bytes, a superblock is {SUPERBLOCK_LEN}",
                    b.len()
                ),
            ));
        }
        if b[MAGIC_OFF..VERSION_OFF] != MAGIC {
            return Err(bad(MAGIC_OFF, "bad magic: not a cowfs superblock".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let stored_crc = u32_at(CRC_OFF);
        if crc32c::crc32c(&b[..CRC_OFF]) != stored_crc {
            return Err(bad(CRC_OFF, "superblock checksum mismatch".into()));
        }
        let raw_version = u32_at(VERSION_OFF);
        let version = FormatVersion::try_from(raw_version).map_err(|v| {
            bad(
                VERSION_OFF,
                format!("format version {v} is not understood (this build reads 1)"),
            )
        })?;
        let block_size = u32_at(BLOCK_SIZE_OFF);
        validate_block_size(block_size)
            .map_err(|_| bad(BLOCK_SIZE_OFF, format!("invalid block size {block_size}")))?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[ID_OFF..CREATED_OFF]);
        let mut created = [0u8; 8];
        created.copy_from_slice(&b[CREATED_OFF..RESERVED_OFF]);
        Ok(Superblock {
            version,
            block_size,
            id,
            created: i64::from_le_bytes(created),
        })
    }

    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub fn validate_block_size(bs: u32) -> Result<()> {
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(Error::Invalid(
            "block size must be a power of two from 4096 to 65536",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() -> Result<()> {
        let sb = Superblock::new(16384)?;
        assert_eq!(Superblock::from_bytes(&sb.to_bytes())?, sb);
        Ok(())
    }

    #[test]
    fn format_versions_are_their_on_disk_numbers() {
        assert_eq!(FormatVersion::V1 as u32, 1);
        assert_eq!(FormatVersion::try_from(1), Ok(FormatVersion::V1));
        assert_eq!(FormatVersion::try_from(0), Err(0));
        assert_eq!(FormatVersion::try_from(2), Err(2));
    }

    #[test]
    fn rejects_bad_block_sizes() {
        for bs in [0, 512, 4095, 6000, 131072] {
            assert!(Superblock::new(bs).is_err(), "{bs}");
        }
    }

    #[test]
    fn every_byte_flip_is_rejected_with_file_and_offset() -> Result<()> {
        let good = Superblock::new(4096)?.to_bytes();
        for i in 0..SUPERBLOCK_LEN {
            let mut b = good;
            b[i] ^= 0x40;
            match Superblock::from_bytes(&b) {
                Err(Error::UnsupportedFormat { file, .. }) => assert_eq!(file, SUPERBLOCK_FILE),
                other => panic!("flip at {i}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn future_version_is_refused_by_name() {
        let mut b = Superblock {
            version: FormatVersion::V1,
            block_size: 4096,
            id: [1; 16],
            created: 0,
        }
        .to_bytes();
        b[VERSION_OFF..VERSION_OFF + 4].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFF]);
        b[CRC_OFF..].copy_from_slice(&crc.to_le_bytes());
        let msg = Superblock::from_bytes(&b)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("format version 2") && msg.contains("offset 8"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_superblock_is_refused() {
        let good = Superblock {
            version: FormatVersion::V1,
            block_size: 4096,
            id: [1; 16],
            created: 0,
        }
        .to_bytes();
        for len in 0..SUPERBLOCK_LEN {
            assert!(Superblock::from_bytes(&good[..len]).is_err());
        }
    }
}
