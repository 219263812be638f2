//! The device-facing side of the sim: DMA by a passthrough device, translated by whatever
//! the device is attached to — nothing (blocked), a stage-2 HWPT (the IOAS directly) or a
//! nested HWPT (the guest's first stage over stage 2, with the HWPT's caches).

use super::walk::{self, DmaAccess, DmaFault, WalkConfig};
use super::{HwptKind, Object, SimHost, bump, lock_caches};
use crate::DeviceId;

impl SimHost {
    /// Translates a user-privilege DMA read (`write = false`) or write by `dev` at `iova`
    /// to a host virtual address. The result is valid up to the end of `iova`'s 4 KiB page.
    pub fn dma_translate(&self, dev: DeviceId, iova: u64, write: bool) -> Result<u64, DmaFault> {
        let access = if write {
            DmaAccess::WRITE
        } else {
            DmaAccess::READ
        };
        self.dma_translate_access(dev, iova, access)
    }

    /// Translates a DMA request of any kind (see [`DmaAccess`]).
    pub fn dma_translate_access(
        &self,
        dev: DeviceId,
        iova: u64,
        access: DmaAccess,
    ) -> Result<u64, DmaFault> {
        let st = self.read();
        let c = &self.counters;
        bump(&c.dma_translations, 1);
        let result = self.translate_locked(&st, dev, iova, access);
        match result {
            Ok((_, Some(true))) => bump(&c.iotlb_hits, 1),
            Ok((_, Some(false))) => bump(&c.iotlb_misses, 1),
            Ok((_, None)) => {}
            Err(_) => bump(&c.dma_faults, 1),
        }
        result.map(|(hva, _)| hva)
    }

    fn translate_locked(
        &self,
        st: &super::State,
        dev: DeviceId,
        iova: u64,
        access: DmaAccess,
    ) -> Result<(u64, Option<bool>), DmaFault> {
        let (hwpt, unit) = match st.objects.get(&dev.0) {
            Some(Object::Device(d)) => (d.attached.ok_or(DmaFault::Blocked)?, self.unit(d.unit)),
            _ => return Err(DmaFault::Blocked),
        };
        let ioas = st.hwpt_ioas(hwpt).ok_or(DmaFault::Blocked)?;
        let Some(Object::Ioas(io)) = st.objects.get(&ioas) else {
            return Err(DmaFault::Blocked);
        };
        let Some(Object::Hwpt(h)) = st.objects.get(&hwpt) else {
            return Err(DmaFault::Blocked);
        };
        match &h.kind {
            HwptKind::Paging { .. } => {
                walk::translate_s2(&io.map, iova, access).map(|hva| (hva, None))
            }
            HwptKind::Nested { data, caches, .. } => {
                let cfg = WalkConfig {
                    fs1gp: unit.fs1gp,
                    haw: unit.aw_bits,
                };
                walk::translate_nested(
                    self.mem.as_ref(),
                    &io.map,
                    &mut lock_caches(caches),
                    data,
                    cfg,
                    iova,
                    access,
                )
                .map(|t| (t.hva, Some(t.iotlb_hit)))
            }
        }
    }

    /// DMA read of `buf.len()` bytes at `iova`, page by page, into `buf`.
    pub fn dma_read(&self, dev: DeviceId, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = iova.wrapping_add(done as u64);
            let chunk = chunk_len(at, buf.len() - done);
            let hva = self.dma_translate(dev, at, false)?;
            self.mem
                .read(hva, &mut buf[done..done + chunk])
                .map_err(|_| DmaFault::HostMemory { hva })?;
            done += chunk;
        }
        Ok(())
    }

    /// DMA write of `data` at `iova`, page by page.
    pub fn dma_write(&self, dev: DeviceId, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let mut done = 0usize;
        while done < data.len() {
            let at = iova.wrapping_add(done as u64);
            let chunk = chunk_len(at, data.len() - done);
            let hva = self.dma_translate(dev, at, true)?;
            self.mem
                .write(hva, &data[done..done + chunk])
                .map_err(|_| DmaFault::HostMemory { hva })?;
            done += chunk;
        }
        Ok(())
    }
}

/// Bytes from `at` to the end of its 4 KiB page, at most `left`.
fn chunk_len(at: u64, left: usize) -> usize {
    let to_page_end = (vtd_spec::PAGE_SIZE - (at & 0xfff)) as usize;
    to_page_end.min(left)
}
