//! The simulated host's configuration and the CAP/ECAP it reports.

use vtd_spec::regs::{Cap, Ecap};

/// How the simulated host IOMMU is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// ECAP.NEST (with SMTS, SSTS, FSTS): nested translation is available.
    pub nesting: bool,
    /// CAP.FS1GP: first-stage 1 GiB pages.
    pub fs1gp: bool,
    /// Host address width: 48, or 57 (which also sets CAP.FS5LP).
    pub aw_bits: u32,
    /// Report (and enforce) ERRATA_772415_SPR17.
    pub errata_772415: bool,
    /// ECAP.SRS: supervisor requests.
    pub srs: bool,
    /// ECAP.EAFS: extended accessed flag.
    pub eafs: bool,
    /// ECAP.SSADS: dirty tracking capability.
    pub dirty_tracking: bool,
    /// PASID bits reported for devices (0: none).
    pub max_pasid_log2: u8,
}

impl Default for SimConfig {
    /// A nesting-capable host like a recent Xeon without the erratum: 48-bit, FS1GP, no
    /// SRS/EAFS.
    fn default() -> Self {
        Self {
            nesting: true,
            fs1gp: true,
            aw_bits: 48,
            errata_772415: false,
            srs: false,
            eafs: false,
            dirty_tracking: false,
            max_pasid_log2: 0,
        }
    }
}

impl SimConfig {
    /// The capability register this host reports (§11.4.2).
    pub fn cap(&self) -> Cap {
        let five = self.aw_bits >= 57;
        Cap::new()
            .with_nd(6)
            .with_sagaw(if five { 0b1100 } else { 0b0100 })
            .with_mgaw((self.aw_bits.clamp(39, 57) - 1) as u8)
            .with_sllps(0b11)
            .with_psi(true)
            .with_mamv(18)
            .with_fs1gp(self.fs1gp)
            .with_fs5lp(five)
            .with_fro(0x22)
    }
    /// The extended capability register this host reports (§11.4.3).
    pub fn ecap(&self) -> Ecap {
        Ecap::new()
            .with_qi(true)
            .with_iro(0xf)
            .with_smts(true)
            .with_fsts(true)
            .with_ssts(true)
            .with_smpwc(true)
            .with_pt(true)
            .with_nest(self.nesting)
            .with_srs(self.srs)
            .with_eafs(self.eafs)
            .with_ssads(self.dirty_tracking)
            .with_pasid(self.max_pasid_log2 > 0)
            .with_pss(self.max_pasid_log2.saturating_sub(1).min(19))
    }
}
