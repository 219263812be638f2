//! The kernel's rules: `impl HostIommu for SimHost`, each refusal with the errno Linux uses.

use std::sync::Mutex;

use super::ioas::IoasMap;
use super::iotlb::NestedCaches;
use super::objects::{HwptKind, HwptObj, IoasObj, Object, err};
use super::{SimConfig, SimHost, bump, lock_caches};
use crate::{
    DeviceId, DmaPerm, HostIommu, HostIommuError, HwCaps, HwInfo, HwInfoType, HwptId, IoasId, Op,
    PtId, Result, VtdHwInfo, VtdS1HwptData, VtdS1Invalidation,
};

impl SimHost {
    fn hw_info_of(c: &SimConfig) -> HwInfo {
        HwInfo {
            kind: HwInfoType::IntelVtd,
            vtd: Some(VtdHwInfo {
                flags: if c.errata_772415 {
                    VtdHwInfo::ERRATA_772415_SPR17
                } else {
                    0
                },
                cap: c.cap(),
                ecap: c.ecap(),
            }),
            max_pasid_log2: c.max_pasid_log2,
            capabilities: HwCaps(if c.dirty_tracking {
                HwCaps::DIRTY_TRACKING
            } else {
                0
            }),
        }
    }

    /// `intel_pasid_setup_nested`'s checks of the stage-1 configuration, done at attach.
    fn check_s1_for_attach(c: &SimConfig, data: &VtdS1HwptData) -> std::result::Result<(), i32> {
        match data.addr_width {
            48 => {}
            57 if c.aw_bits >= 57 => {}
            _ => return Err(libc::EINVAL),
        }
        if data.sre() && !c.srs {
            return Err(libc::EINVAL);
        }
        if data.eafe() && !c.eafs {
            return Err(libc::EINVAL);
        }
        Ok(())
    }
}

impl HostIommu for SimHost {
    fn hw_info(&self, dev: DeviceId) -> Result<HwInfo> {
        let unit = self.read().device(dev)?.unit;
        Ok(Self::hw_info_of(self.unit(unit)))
    }

    fn ioas_alloc(&self) -> Result<IoasId> {
        Ok(IoasId(self.write().alloc_id(Object::Ioas(IoasObj {
            map: IoasMap::default(),
        }))))
    }

    fn ioas_map(&self, ioas: IoasId, iova: u64, hva: u64, len: u64, perm: DmaPerm) -> Result<()> {
        let mut st = self.write();
        let errata_ro = !perm.write && st.ioas_backs_errata_parent(ioas.0);
        let obj = st.ioas_mut(ioas.0, Op::IoasMap)?;
        obj.map
            .check_map(iova, hva, len, perm)
            .map_err(|e| err(Op::IoasMap, e.errno()))?;
        if errata_ro {
            tracing::warn!(
                "Read-only mapping is disallowed on the domain which serves as the parent in a nested configuration, due to HW errata (ERRATA_772415_SPR17)"
            );
            return Err(err(Op::IoasMap, libc::EINVAL));
        }
        obj.map
            .map(iova, hva, len, perm)
            .map_err(|e| err(Op::IoasMap, e.errno()))
    }

    fn ioas_unmap(&self, ioas: IoasId, iova: u64, len: u64) -> Result<u64> {
        let mut st = self.write();
        let n = st
            .ioas_mut(ioas.0, Op::IoasUnmap)?
            .map
            .unmap(iova, len)
            .map_err(|e| err(Op::IoasUnmap, e.errno()))?;
        st.flush_nested_on_ioas(ioas.0);
        Ok(n)
    }

    fn hwpt_alloc_nest_parent(&self, dev: DeviceId, ioas: IoasId) -> Result<HwptId> {
        let op = Op::AllocNestParent;
        let mut st = self.write();
        let unit = self.unit(st.device(dev)?.unit);
        let has_ro = st.ioas(ioas.0, op)?.map.has_read_only();
        if let Some(errno) = self.inject().alloc.take() {
            return Err(err(op, errno));
        }
        if !unit.nesting {
            return Err(err(op, libc::EOPNOTSUPP));
        }
        if unit.errata_772415 && has_ro {
            // Filling the new domain from the IOAS hits a read-only area.
            return Err(err(op, libc::EINVAL));
        }
        let id = st.alloc_id(Object::Hwpt(HwptObj {
            kind: HwptKind::Paging {
                ioas: ioas.0,
                nest_parent: true,
                auto: false,
                errata: unit.errata_772415,
                aw_bits: unit.aw_bits,
            },
            users: 0,
            children: 0,
        }));
        bump(&self.counters.nest_parent_allocs, 1);
        Ok(HwptId(id))
    }

    fn hwpt_alloc_nested(
        &self,
        dev: DeviceId,
        parent: HwptId,
        data: &VtdS1HwptData,
    ) -> Result<HwptId> {
        let op = Op::AllocNested;
        let mut st = self.write();
        st.device(dev)?;
        match st.objects.get(&parent.0) {
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Paging {
                    nest_parent: true, ..
                },
                ..
            })) => {}
            // An IOAS pt_id with VTD_S1 data: the driver's paging alloc refuses user data.
            Some(Object::Ioas(_)) => return Err(err(op, libc::EOPNOTSUPP)),
            // Not a parent (automatic or plain paging HWPT, or a nested one).
            Some(Object::Hwpt(_)) => return Err(err(op, libc::EINVAL)),
            _ => return Err(err(op, libc::ENOENT)),
        }
        if let Some(errno) = self.inject().alloc.take() {
            return Err(err(op, errno));
        }
        if data.flags & !VtdS1HwptData::ALL_FLAGS != 0 || data.reserved != 0 {
            return Err(err(op, libc::EOPNOTSUPP));
        }
        let id = st.alloc_id(Object::Hwpt(HwptObj {
            kind: HwptKind::Nested {
                parent: parent.0,
                data: *data,
                caches: Mutex::new(NestedCaches::default()),
            },
            users: 0,
            children: 0,
        }));
        st.hwpt_mut(parent.0, op)?.children += 1;
        bump(&self.counters.binds, 1);
        Ok(HwptId(id))
    }

    fn attach(&self, dev: DeviceId, pt: PtId) -> Result<HwptId> {
        let op = Op::Attach;
        let mut st = self.write();
        let (old, unit) = {
            let d = st.device(dev)?;
            (d.attached, self.unit(d.unit))
        };
        // Resolve the target (an IOAS gets an automatic HWPT, reused if one exists).
        let target = match st.objects.get(&pt.raw()) {
            Some(Object::Ioas(_)) if matches!(pt, PtId::Ioas(_)) => None,
            Some(Object::Hwpt(h)) if matches!(pt, PtId::Hwpt(_)) => {
                // The stage 2 must fit this unit (`paging_domain_compatible`).
                if st.hwpt_s2_aw(pt.raw()).is_some_and(|aw| aw > unit.aw_bits) {
                    return Err(err(op, libc::EINVAL));
                }
                if let HwptKind::Nested { data, .. } = &h.kind {
                    Self::check_s1_for_attach(unit, data).map_err(|e| err(op, e))?;
                }
                Some(pt.raw())
            }
            _ => return Err(err(op, libc::ENOENT)),
        };
        if let Some(errno) = self.inject().attach.take() {
            return Err(err(op, errno));
        }
        let target = match target {
            Some(t) => t,
            None => {
                let ioas = pt.raw();
                let reuse = st.objects.iter().find_map(|(id, o)| match o {
                    Object::Hwpt(HwptObj {
                        kind:
                            HwptKind::Paging {
                                ioas: i,
                                auto: true,
                                aw_bits,
                                ..
                            },
                        ..
                    }) if *i == ioas && *aw_bits <= unit.aw_bits => Some(*id),
                    _ => None,
                });
                match reuse {
                    Some(id) => id,
                    None => st.alloc_id(Object::Hwpt(HwptObj {
                        kind: HwptKind::Paging {
                            ioas,
                            nest_parent: false,
                            auto: true,
                            errata: false,
                            aw_bits: unit.aw_bits,
                        },
                        users: 0,
                        children: 0,
                    })),
                }
            }
        };
        if old == Some(target) {
            return Ok(HwptId(target));
        }
        st.hwpt_mut(target, op)?.users += 1;
        st.device_mut(dev)?.attached = Some(target);
        st.release_attachment(old);
        if old.is_some() {
            bump(&self.counters.replaces, 1);
        } else {
            bump(&self.counters.attaches, 1);
        }
        Ok(HwptId(target))
    }

    fn detach(&self, dev: DeviceId) -> Result<()> {
        let mut st = self.write();
        let old = st.device_mut(dev)?.attached.take();
        if old.is_some() {
            bump(&self.counters.detaches, 1);
        }
        st.release_attachment(old);
        Ok(())
    }

    fn hwpt_invalidate(&self, hwpt: HwptId, entries: &[VtdS1Invalidation]) -> Result<u32> {
        let op = Op::Invalidate;
        let st = self.read();
        bump(&self.counters.invalidation_calls, 1);
        let inject = self.inject().invalidate.take();
        let total = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let mut caches = match &st.hwpt(hwpt.0, op)?.kind {
            HwptKind::Nested { caches, .. } => lock_caches(caches),
            HwptKind::Paging { .. } => return Err(err(op, libc::EINVAL)),
        };
        let mut processed = 0u32;
        let mut failure = None;
        for e in entries {
            if let Some((errno, after)) = inject
                && processed >= after
            {
                failure = Some(errno);
                break;
            }
            if e.flags & !VtdS1Invalidation::LEAF != 0 || e.reserved != 0 {
                failure = Some(libc::EOPNOTSUPP);
                break;
            }
            if e.addr & 0xfff != 0 || (e.is_all() && e.addr != 0) {
                failure = Some(libc::EINVAL);
                break;
            }
            if e.is_all() {
                caches.flush();
            } else {
                let len = e.npages.saturating_mul(vtd_spec::PAGE_SIZE);
                let last = e.addr.saturating_add(len.saturating_sub(1));
                if e.npages != 0 {
                    caches.invalidate(e.addr, last, e.leaf());
                }
            }
            processed += 1;
        }
        if failure.is_none()
            && let Some((errno, after)) = inject
            && processed >= after
            && entries.is_empty()
        {
            failure = Some(errno);
        }
        bump(&self.counters.invalidation_entries, u64::from(processed));
        match failure {
            None => Ok(processed),
            Some(errno) => Err(HostIommuError::Invalidate {
                processed,
                total,
                errno,
            }),
        }
    }

    fn hwpt_destroy(&self, hwpt: HwptId) -> Result<()> {
        let op = Op::Destroy;
        let mut st = self.write();
        let h = st.hwpt(hwpt.0, op)?;
        if h.users > 0 || h.children > 0 {
            return Err(err(op, libc::EBUSY));
        }
        let parent = match h.kind {
            HwptKind::Nested { parent, .. } => Some(parent),
            HwptKind::Paging { .. } => None,
        };
        st.objects.remove(&hwpt.0);
        if let Some(p) = parent
            && let Ok(p) = st.hwpt_mut(p, op)
        {
            p.children = p.children.saturating_sub(1);
        }
        Ok(())
    }

    fn ioas_destroy(&self, ioas: IoasId) -> Result<()> {
        let op = Op::Destroy;
        let mut st = self.write();
        st.ioas(ioas.0, op)?;
        let in_use = st.objects.values().any(|o| {
            matches!(o, Object::Hwpt(HwptObj { kind: HwptKind::Paging { ioas: i, .. }, .. }) if *i == ioas.0)
        });
        if in_use {
            return Err(err(op, libc::EBUSY));
        }
        st.objects.remove(&ioas.0);
        Ok(())
    }
}
