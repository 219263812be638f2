//! An IO address space as the kernel keeps it: IOVA → host-VA areas with permissions.
//!
//! In the sim this is also the stage-2 table of every HWPT built on the IOAS (the kernel
//! fills each domain from the IOAS areas; GPA = IOVA for the VMM's guest-RAM IOAS).

use std::collections::BTreeMap;

use crate::DmaPerm;

/// One `IOMMU_IOAS_MAP` area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// Length in bytes.
    pub len: u64,
    /// Host virtual address of the first byte.
    pub hva: u64,
    /// Permissions.
    pub perm: DmaPerm,
}

/// Errors of IOAS bookkeeping, each the kernel's errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoasError {
    /// The range overlaps an existing area (`EEXIST`).
    #[error("IOVA range overlaps an existing mapping")]
    Exists,
    /// Nothing mapped in the range, or an area straddles its ends (`ENOENT`).
    #[error("No mapping covers the IOVA range")]
    NotFound,
    /// Zero length, misaligned, or no permission (`EINVAL`).
    #[error("Invalid IOVA range or permissions")]
    Invalid,
    /// `iova + len` overflows (`EOVERFLOW`).
    #[error("IOVA range overflows")]
    Overflow,
}

impl IoasError {
    /// The errno the kernel uses for this refusal.
    pub fn errno(self) -> i32 {
        match self {
            Self::Exists => libc::EEXIST,
            Self::NotFound => libc::ENOENT,
            Self::Invalid => libc::EINVAL,
            Self::Overflow => libc::EOVERFLOW,
        }
    }
}

const PAGE_MASK: u64 = vtd_spec::PAGE_SIZE - 1;

/// The areas of one IOAS, keyed by first IOVA.
#[derive(Clone, Debug, Default)]
pub struct IoasMap {
    areas: BTreeMap<u64, Area>,
}

impl IoasMap {
    /// Checks a map request without changing anything.
    pub fn check_map(&self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<(), IoasError> {
        if len == 0 || (iova | hva | len) & PAGE_MASK != 0 || !(perm.read || perm.write) {
            return Err(IoasError::Invalid);
        }
        let last = iova.checked_add(len - 1).ok_or(IoasError::Overflow)?;
        hva.checked_add(len - 1).ok_or(IoasError::Overflow)?;
        if self.overlapping(iova, last).next().is_some() {
            return Err(IoasError::Exists);
        }
        Ok(())
    }

    /// `IOMMU_IOAS_MAP` with a fixed IOVA.
    pub fn map(&mut self, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<(), IoasError> {
        self.check_map(iova, hva, len, perm)?;
        self.areas.insert(iova, Area { len, hva, perm });
        Ok(())
    }

    /// `IOMMU_IOAS_UNMAP`: removes whole areas inside `[iova, iova + len)`; returns bytes
    /// unmapped. `iova = 0, len = u64::MAX` removes everything (and succeeds when empty).
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<u64, IoasError> {
        if iova == 0 && len == u64::MAX {
            let total = self.areas.values().map(|a| a.len).sum();
            self.areas.clear();
            return Ok(total);
        }
        if len == 0 {
            return Err(IoasError::Invalid);
        }
        let last = iova.checked_add(len - 1).ok_or(IoasError::Overflow)?;
        let hit: Vec<(u64, Area)> = self.overlapping(iova, last).collect();
        if hit.is_empty() {
            return Err(IoasError::NotFound);
        }
        if hit
            .iter()
            .any(|(start, a)| *start < iova || start + (a.len - 1) > last)
        {
            return Err(IoasError::NotFound);
        }
        let mut total = 0;
        for (start, a) in hit {
            self.areas.remove(&start);
            total += a.len;
        }
        Ok(total)
    }

    /// The area containing `iova`, with its first IOVA.
    pub fn lookup(&self, iova: u64) -> Option<(u64, Area)> {
        let (start, area) = self.areas.range(..=iova).next_back()?;
        (iova - start < area.len).then_some((*start, *area))
    }

    /// Translates one address: host VA and the area's permissions.
    pub fn translate(&self, iova: u64) -> Option<(u64, DmaPerm)> {
        let (start, area) = self.lookup(iova)?;
        Some((area.hva + (iova - start), area.perm))
    }

    /// Whether any area is read-only (what ERRATA_772415 refuses in a nest parent).
    pub fn has_read_only(&self) -> bool {
        self.areas.values().any(|a| !a.perm.write)
    }

    /// Number of areas.
    pub fn len(&self) -> usize {
        self.areas.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.areas.is_empty()
    }

    fn overlapping(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, Area)> + '_ {
        let before = self
            .areas
            .range(..first)
            .next_back()
            .filter(|(s, a)| *s + (a.len - 1) >= first);
        before
            .into_iter()
            .chain(self.areas.range(first..=last))
            .map(|(s, a)| (*s, *a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_overlap_unmap_rules() {
        let mut m = IoasMap::default();
        m.map(0x1000, 0x10_0000, 0x2000, DmaPerm::READ_WRITE)
            .unwrap();
        assert_eq!(
            m.map(0x2000, 0x20_0000, 0x1000, DmaPerm::READ),
            Err(IoasError::Exists)
        );
        assert_eq!(
            m.map(0, 0x20_0000, 0x2000, DmaPerm::READ),
            Err(IoasError::Exists)
        );
        assert_eq!(
            m.map(0x5000, 0x20_0001, 0x1000, DmaPerm::READ),
            Err(IoasError::Invalid)
        );
        assert_eq!(
            m.map(
                0x5000,
                0x20_0000,
                0x1000,
                DmaPerm {
                    read: false,
                    write: false
                }
            ),
            Err(IoasError::Invalid)
        );
        assert_eq!(
            m.map(u64::MAX - 0xfff, 0, 0x2000, DmaPerm::READ),
            Err(IoasError::Overflow)
        );
        assert_eq!(m.translate(0x2abc), Some((0x10_1abc, DmaPerm::READ_WRITE)));
        assert_eq!(m.translate(0x3000), None);
        assert_eq!(m.unmap(0x8000, 0x1000), Err(IoasError::NotFound));
        assert_eq!(
            m.unmap(0x2000, 0x1000),
            Err(IoasError::NotFound),
            "straddles"
        );
        assert_eq!(m.unmap(0, 0x10000), Ok(0x2000));
        assert!(m.is_empty());
        assert_eq!(m.unmap(0, u64::MAX), Ok(0), "unmap-all of nothing succeeds");
    }
}
