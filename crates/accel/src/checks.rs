//! Whether a host IOMMU device can sit behind the vIOMMU with the configured options.
//!
//! The checks of QEMU's `vtd_check_hiod` / `vtd_check_hiod_accel`, each failing with one
//! sentence (QEMU's wording where QEMU has one), plus nesting support, which QEMU only finds
//! out when the first bind fails (both host checks are host-iommu's `require_vtd_nesting`).

use host_iommu::{HwInfo, NestingRefusal};

/// A host device the vIOMMU cannot accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompatError {
    /// Without caching mode, Linux does not invalidate the PASID cache when it installs a PASID
    /// entry, so the vIOMMU would never learn of the binding.
    #[error("Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU.")]
    CachingModeOff,
    /// Nesting needs the guest to use scalable-mode first-stage tables.
    #[error("Device assignment needs x-scalable-mode=on and x-flts=on for Intel IOMMU.")]
    FirstStageOff,
    /// A second device at the same requester id.
    #[error("Host IOMMU device already exist for {0}")]
    Duplicate(String),
    /// The host IOMMU is not VT-d, or cannot nest.
    #[error(transparent)]
    Host(#[from] NestingRefusal),
    /// The guest could use more address bits than the host walks.
    #[error("aw-bits {guest} > host aw-bits {host}")]
    AddressWidth {
        /// The vIOMMU's aw-bits.
        guest: u8,
        /// The host's MGAW + 1.
        host: u32,
    },
    /// The guest may build 1 GiB first-stage pages the host cannot walk.
    #[error("First stage 1GB large page is unsupported by host IOMMU")]
    NoFs1gp,
    /// A device behind a PCI bridge shares its requester id with its siblings.
    #[error("Host device downstream to a PCI bridge is unsupported when x-flts=on")]
    BehindBridge,
}

/// Checks a host device for the vIOMMU configuration (QEMU's order: caching mode first).
pub fn check_host_device(
    config: &vtd::config::Config,
    info: &HwInfo,
    behind_bridge: bool,
) -> Result<(), CompatError> {
    if !config.caching_mode {
        return Err(CompatError::CachingModeOff);
    }
    if !(config.scalable_mode && config.first_stage) {
        return Err(CompatError::FirstStageOff);
    }
    let vtd = info.require_vtd_nesting()?;
    let host_aw = vtd.cap.guest_address_width();
    if u32::from(config.aw_bits) > host_aw {
        return Err(CompatError::AddressWidth {
            guest: config.aw_bits,
            host: host_aw,
        });
    }
    if config.fs1gp && !vtd.fs1gp() {
        return Err(CompatError::NoFs1gp);
    }
    if behind_bridge {
        return Err(CompatError::BehindBridge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_iommu::{HwCaps, HwInfoType, VtdHwInfo};
    use vtd_spec::regs::{Cap, Ecap};

    fn host(nest: bool, fs1gp: bool, mgaw: u8) -> HwInfo {
        HwInfo {
            kind: HwInfoType::IntelVtd,
            vtd: Some(VtdHwInfo {
                flags: 0,
                cap: Cap::new().with_fs1gp(fs1gp).with_mgaw(mgaw),
                ecap: Ecap::new().with_smts(true).with_nest(nest),
            }),
            max_pasid_log2: 0,
            capabilities: HwCaps::default(),
        }
    }

    fn config() -> vtd::config::Config {
        vtd::config::Config::parse("x-scalable-mode=on,x-flts=on,caching-mode=on").unwrap()
    }

    #[test]
    fn accepts_a_nesting_host() {
        assert_eq!(
            check_host_device(&config(), &host(true, true, 47), false),
            Ok(())
        );
    }

    #[test]
    fn each_refusal_has_its_sentence() {
        let c = config();
        let no_cm = vtd::config::Config {
            caching_mode: false,
            ..c
        };
        assert_eq!(
            check_host_device(&no_cm, &host(true, true, 47), false)
                .unwrap_err()
                .to_string(),
            "Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU."
        );
        let legacy = vtd::config::Config {
            scalable_mode: false,
            first_stage: false,
            ..c
        };
        assert_eq!(
            check_host_device(&legacy, &host(true, true, 47), false),
            Err(CompatError::FirstStageOff)
        );
        let mut smmu = host(true, true, 47);
        smmu.kind = HwInfoType::Other(2);
        assert_eq!(
            check_host_device(&c, &smmu, false).unwrap_err().to_string(),
            "Incompatible host platform IOMMU type 2"
        );
        assert_eq!(
            check_host_device(&c, &host(true, true, 38), false)
                .unwrap_err()
                .to_string(),
            "aw-bits 48 > host aw-bits 39"
        );
        assert_eq!(
            check_host_device(&c, &host(true, false, 47), false),
            Err(CompatError::NoFs1gp)
        );
        let no_1g = vtd::config::Config { fs1gp: false, ..c };
        assert_eq!(
            check_host_device(&no_1g, &host(true, false, 47), false),
            Ok(())
        );
        assert_eq!(
            check_host_device(&c, &host(false, true, 47), false)
                .unwrap_err()
                .to_string(),
            "The host IOMMU does not support nested translation (ECAP.NEST is clear)"
        );
        assert_eq!(
            check_host_device(&c, &host(true, true, 47), true),
            Err(CompatError::BehindBridge)
        );
    }
}
