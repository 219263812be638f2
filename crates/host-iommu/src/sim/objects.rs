//! The kernel objects of the sim: IOASes, HWPTs (paging or nested) and bound devices, in
//! one id namespace as iommufd keeps them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::ioas::IoasMap;
use super::iotlb::NestedCaches;
use super::lock_caches;
use crate::{DeviceId, HostIommuError, Op, Result, VtdS1HwptData};

#[derive(Debug)]
pub(crate) struct IoasObj {
    pub(crate) map: IoasMap,
}

#[derive(Debug)]
pub(crate) enum HwptKind {
    /// A kernel-managed stage-2 HWPT on an IOAS.
    Paging {
        ioas: u32,
        nest_parent: bool,
        auto: bool,
        /// Allocated for a unit with ERRATA_772415: no read-only mappings (nest parent).
        errata: bool,
        /// Address width of the unit it was allocated for.
        aw_bits: u32,
    },
    /// A user-managed stage-1 HWPT on a nest parent.
    Nested {
        parent: u32,
        data: VtdS1HwptData,
        /// Locked on its own: DMA through one HWPT never waits for another's walk.
        caches: Mutex<NestedCaches>,
    },
}

#[derive(Debug)]
pub(crate) struct HwptObj {
    pub(crate) kind: HwptKind,
    /// Attached devices.
    pub(crate) users: u32,
    /// Nested HWPTs on this one.
    pub(crate) children: u32,
}

#[derive(Debug)]
pub(crate) struct DeviceObj {
    pub(crate) name: String,
    pub(crate) attached: Option<u32>,
    /// The host VT-d unit the device sits behind.
    pub(crate) unit: usize,
}

#[derive(Debug)]
pub(crate) enum Object {
    Ioas(IoasObj),
    Hwpt(HwptObj),
    Device(DeviceObj),
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) next_id: u32,
    pub(crate) objects: BTreeMap<u32, Object>,
}

pub(crate) fn err(op: Op, errno: i32) -> HostIommuError {
    HostIommuError::kernel(op, errno)
}

impl State {
    pub(crate) fn alloc_id(&mut self, obj: Object) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.objects.insert(id, obj);
        id
    }
    pub(crate) fn ioas(&self, id: u32, op: Op) -> Result<&IoasObj> {
        match self.objects.get(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    pub(crate) fn ioas_mut(&mut self, id: u32, op: Op) -> Result<&mut IoasObj> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(i)) => Ok(i),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    pub(crate) fn hwpt(&self, id: u32, op: Op) -> Result<&HwptObj> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(h)) => Ok(h),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    pub(crate) fn hwpt_mut(&mut self, id: u32, op: Op) -> Result<&mut HwptObj> {
        match self.objects.get_mut(&id) {
            Some(Object::Hwpt(h)) => Ok(h),
            _ => Err(err(op, libc::ENOENT)),
        }
    }
    pub(crate) fn device(&self, dev: DeviceId) -> Result<&DeviceObj> {
        match self.objects.get(&dev.0) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(HostIommuError::UnknownDevice(dev)),
        }
    }
    pub(crate) fn device_mut(&mut self, dev: DeviceId) -> Result<&mut DeviceObj> {
        match self.objects.get_mut(&dev.0) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(HostIommuError::UnknownDevice(dev)),
        }
    }
    /// The IOAS a paging or nested HWPT finally translates through.
    pub(crate) fn hwpt_ioas(&self, id: u32) -> Option<u32> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Paging { ioas, .. },
                ..
            })) => Some(*ioas),
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Nested { parent, .. },
                ..
            })) => self.hwpt_ioas(*parent),
            _ => None,
        }
    }
    /// Whether any nest parent sits on `ioas`.
    pub(crate) fn ioas_backs_errata_parent(&self, ioas: u32) -> bool {
        self.objects.values().any(|o| {
            matches!(o, Object::Hwpt(HwptObj { kind: HwptKind::Paging { ioas: i, nest_parent: true, errata: true, .. }, .. }) if *i == ioas)
        })
    }
    /// The address width of the stage-2 HWPT `id` translates through.
    pub(crate) fn hwpt_s2_aw(&self, id: u32) -> Option<u32> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Paging { aw_bits, .. },
                ..
            })) => Some(*aw_bits),
            Some(Object::Hwpt(HwptObj {
                kind: HwptKind::Nested { parent, .. },
                ..
            })) => self.hwpt_s2_aw(*parent),
            _ => None,
        }
    }
    /// Stage-2 change on `ioas`: flush every nested HWPT built over it.
    pub(crate) fn flush_nested_on_ioas(&mut self, ioas: u32) {
        let parents: Vec<u32> = self
            .objects
            .iter()
            .filter_map(|(id, o)| match o {
                Object::Hwpt(HwptObj {
                    kind: HwptKind::Paging { ioas: i, .. },
                    ..
                }) if *i == ioas => Some(*id),
                _ => None,
            })
            .collect();
        for o in self.objects.values() {
            if let Object::Hwpt(HwptObj {
                kind: HwptKind::Nested { parent, caches, .. },
                ..
            }) = o
                && parents.contains(parent)
            {
                lock_caches(caches).flush();
            }
        }
    }
    /// Moves `dev` off `old` (if any): drops the user count and frees an unused automatic
    /// HWPT, as the kernel does.
    pub(crate) fn release_attachment(&mut self, old: Option<u32>) {
        let Some(old) = old else { return };
        let mut free = false;
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&old) {
            h.users = h.users.saturating_sub(1);
            free = h.users == 0 && matches!(h.kind, HwptKind::Paging { auto: true, .. });
        }
        if free {
            self.objects.remove(&old);
        }
    }
}
