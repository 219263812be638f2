//! Configuration of the remapping unit, with QEMU's `intel-iommu` option names and meanings.
//!
//! A [`Config`] is parsed from a comma-separated option string
//! (`"x-scalable-mode=on,x-flts=on,aw-bits=48"`, see [`Config::parse`]) or built in code, and is
//! checked by [`Config::validate`]. The capability registers the guest reads are derived from it
//! ([`Config::cap`], [`Config::ecap`]); the option names and refusals follow QEMU's
//! `vtd_properties[]` and `vtd_decide_config()` so command lines carry over.
//!
//! | option | default | effect |
//! |---|---|---|
//! | `x-scalable-mode` / `scalable-mode` | off | ECAP.SMTS (and SSTS unless `x-flts`) |
//! | `x-flts` / `fsts` | off | ECAP.FSTS instead of SSTS; CAP.FS1GP with `fs1gp` |
//! | `x-ssts` | off | with `x-flts`: also offer second stage (ECAP.SSTS); QEMU cannot |
//! | `aw-bits` | 48 | CAP.MGAW = aw-bits − 1, CAP.SAGAW (39: 3-level; 48: 3- and 4-level) |
//! | `caching-mode` | off | CAP.CM |
//! | `fs1gp` | on | CAP.FS1GP (first-stage 1 GiB pages), only with `x-flts` |
//! | `pt` | on | ECAP.PT (pass-through); in ECAP, never in CAP |
//! | `snoop-control` | off | ECAP.SC |
//! | `x-pasid-mode` / `pasid-bits` | off | ECAP.PASID, PSS = bits − 1 (`on` = 8 bits, or a number 1-20) |
//! | `device-iotlb` | off | ECAP.DT |
//! | `intremap`, `eim` | off | refused when on: interrupt remapping is not emulated |

use vtd_spec::regs::{Cap, Ecap};

/// The fault-recording registers start at 0x220 (CAP.FRO = 0x22), as in QEMU.
pub const FAULT_RECORD_OFFSET_UNITS: u16 = 0x22;
/// Number of fault-recording registers offered (CAP.NFR + 1).
pub const FAULT_RECORDS: usize = 8;
/// The IOTLB / IVA registers sit at 0xF0 (ECAP.IRO = 0xF), as in QEMU.
pub const IOTLB_REGISTER_OFFSET_UNITS: u16 = 0xf;
/// CAP.MAMV: the largest address mask for page-selective IOTLB invalidation (QEMU's value).
pub const MAX_ADDRESS_MASK: u8 = 18;
/// CAP.ND = 6: 2^16 domain ids.
pub const DOMAIN_ID_FIELD: u8 = 6;
/// PASID width offered by `x-pasid-mode=on` (QEMU: PSS = 7).
pub const DEFAULT_PASID_BITS: u8 = 8;

/// A refused configuration: one clear sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The option name is not one this unit knows.
    #[error("Unknown intel-iommu option '{0}'")]
    UnknownOption(String),
    /// An option was given without `=value`.
    #[error("Option '{0}' needs a value (name=value)")]
    MissingValue(String),
    /// An option was given twice.
    #[error("Option '{0}' is given more than once")]
    Duplicate(String),
    /// A boolean option got something other than on/off/true/false/yes/no.
    #[error("Option '{option}' takes on/off/true/false/yes/no, not '{value}'")]
    NotABoolean {
        /// The option name.
        option: String,
        /// The value given.
        value: String,
    },
    /// A numeric option got something that is not a number in range.
    #[error("Option '{option}' takes {expected}, not '{value}'")]
    BadNumber {
        /// The option name.
        option: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// First-stage translation without scalable mode.
    #[error("x-flts is only available in scalable mode")]
    FltsWithoutScalableMode,
    /// Second stage next to first stage without first stage.
    #[error(
        "x-ssts only adds second stage next to x-flts; scalable mode without x-flts already offers second stage"
    )]
    SstsWithoutFlts,
    /// First stage needs 48-bit addresses.
    #[error("Scalable mode(x-flts=on): supported value for aw-bits is: 48")]
    AwBitsFirstStage,
    /// Scalable mode, second stage: 39 or 48.
    #[error("Scalable mode(x-flts=off): supported values for aw-bits are: 39, 48")]
    AwBitsScalable,
    /// Legacy mode: 39 or 48.
    #[error("Legacy mode: supported values for aw-bits are: 39, 48")]
    AwBitsLegacy,
    /// PASIDs need scalable mode.
    #[error("Need to set scalable mode for PASID")]
    PasidWithoutScalableMode,
    /// Interrupt remapping was asked for.
    #[error("intremap=on is refused: this IOMMU does not emulate interrupt remapping")]
    InterruptRemapping,
    /// x2APIC interrupt remapping was asked for.
    #[error(
        "eim=on cannot be selected without intremap=on, and interrupt remapping is not emulated"
    )]
    ExtendedInterruptMode,
}

/// What the remapping unit offers the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// `x-scalable-mode`: scalable-mode translation (ECAP.SMTS).
    pub scalable_mode: bool,
    /// `x-flts`: first-stage translation (ECAP.FSTS) instead of second stage.
    pub first_stage: bool,
    /// `x-ssts`: with `x-flts`, also offer second-stage translation (ECAP.SSTS).
    pub second_stage_too: bool,
    /// `aw-bits`: guest address width, 39 or 48.
    pub aw_bits: u8,
    /// `caching-mode`: CAP.CM.
    pub caching_mode: bool,
    /// `fs1gp`: first-stage 1 GiB pages (only with `x-flts`).
    pub fs1gp: bool,
    /// `pt`: pass-through translation type (ECAP.PT).
    pub pass_through: bool,
    /// `snoop-control`: ECAP.SC.
    pub snoop_control: bool,
    /// `x-pasid-mode` / `pasid-bits`: PASID width in bits, `None` for no PASID support.
    pub pasid_bits: Option<u8>,
    /// `device-iotlb`: device-TLBs / ATS (ECAP.DT).
    pub device_iotlb: bool,
}

impl Default for Config {
    /// QEMU's defaults: legacy mode, 48-bit, pass-through offered, 1 GiB first-stage pages.
    fn default() -> Self {
        Self {
            scalable_mode: false,
            first_stage: false,
            second_stage_too: false,
            aw_bits: 48,
            caching_mode: false,
            fs1gp: true,
            pass_through: true,
            snoop_control: false,
            pasid_bits: None,
            device_iotlb: false,
        }
    }
}

fn parse_bool(option: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::NotABoolean {
            option: option.to_string(),
            value: value.to_string(),
        }),
    }
}

fn parse_number(
    option: &str,
    value: &str,
    range: std::ops::RangeInclusive<u8>,
    expected: &'static str,
) -> Result<u8, ConfigError> {
    value
        .parse::<u8>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| ConfigError::BadNumber {
            option: option.to_string(),
            value: value.to_string(),
            expected,
        })
}

/// The canonical name of an option, resolving QEMU's aliases.
fn canonical(name: &str) -> Option<&'static str> {
    Some(match name {
        "x-scalable-mode" | "scalable-mode" => "x-scalable-mode",
        "x-flts" | "flts" | "fsts" => "x-flts",
        "x-ssts" | "ssts" => "x-ssts",
        "aw-bits" => "aw-bits",
        "caching-mode" => "caching-mode",
        "fs1gp" => "fs1gp",
        "pt" => "pt",
        "snoop-control" => "snoop-control",
        "x-pasid-mode" | "pasid-bits" => "x-pasid-mode",
        "device-iotlb" => "device-iotlb",
        "intremap" => "intremap",
        "eim" => "eim",
        _ => return None,
    })
}

impl Config {
    /// The configuration the project targets: scalable mode with first-stage translation.
    pub fn first_stage() -> Self {
        Self {
            scalable_mode: true,
            first_stage: true,
            ..Self::default()
        }
    }

    /// Parses `name=value[,name=value...]` and validates the result. Whitespace around items is
    /// ignored; an empty string gives the defaults.
    pub fn parse(options: &str) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for item in options.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| match canonical(item) {
                    Some(_) => ConfigError::MissingValue(item.to_string()),
                    None => ConfigError::UnknownOption(item.to_string()),
                })?;
            let key = canonical(name).ok_or_else(|| ConfigError::UnknownOption(name.into()))?;
            if seen.contains(&key) {
                return Err(ConfigError::Duplicate(name.to_string()));
            }
            seen.push(key);
            config.apply(key, name, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, key: &str, name: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "x-scalable-mode" => self.scalable_mode = parse_bool(name, value)?,
            "x-flts" => self.first_stage = parse_bool(name, value)?,
            "x-ssts" => self.second_stage_too = parse_bool(name, value)?,
            "aw-bits" => self.aw_bits = parse_number(name, value, 1..=64, "39 or 48")?,
            "caching-mode" => self.caching_mode = parse_bool(name, value)?,
            "fs1gp" => self.fs1gp = parse_bool(name, value)?,
            "pt" => self.pass_through = parse_bool(name, value)?,
            "snoop-control" => self.snoop_control = parse_bool(name, value)?,
            "device-iotlb" => self.device_iotlb = parse_bool(name, value)?,
            "x-pasid-mode" => {
                self.pasid_bits = match parse_bool(name, value) {
                    Ok(true) => Some(DEFAULT_PASID_BITS),
                    Ok(false) => None,
                    Err(_) => Some(parse_number(
                        name,
                        value,
                        1..=20,
                        "on/off or a PASID width of 1 to 20 bits",
                    )?),
                }
            }
            "intremap" => {
                if parse_bool(name, value)? {
                    return Err(ConfigError::InterruptRemapping);
                }
            }
            "eim" => {
                if parse_bool(name, value)? {
                    return Err(ConfigError::ExtendedInterruptMode);
                }
            }
            _ => return Err(ConfigError::UnknownOption(name.to_string())),
        }
        Ok(())
    }

    /// Checks the combination, with QEMU's sentences where QEMU has one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.first_stage && !self.scalable_mode {
            return Err(ConfigError::FltsWithoutScalableMode);
        }
        if self.second_stage_too && !self.first_stage {
            return Err(ConfigError::SstsWithoutFlts);
        }
        match (self.scalable_mode, self.first_stage, self.aw_bits) {
            (true, true, 48) | (true, false, 39 | 48) | (false, _, 39 | 48) => {}
            (true, true, _) => return Err(ConfigError::AwBitsFirstStage),
            (true, false, _) => return Err(ConfigError::AwBitsScalable),
            (false, _, _) => return Err(ConfigError::AwBitsLegacy),
        }
        if let Some(bits) = self.pasid_bits {
            if !self.scalable_mode {
                return Err(ConfigError::PasidWithoutScalableMode);
            }
            if !(1..=20).contains(&bits) {
                return Err(ConfigError::BadNumber {
                    option: "x-pasid-mode".into(),
                    value: bits.to_string(),
                    expected: "on/off or a PASID width of 1 to 20 bits",
                });
            }
        }
        Ok(())
    }

    /// Whether second-stage translation is offered (legacy mode always uses it).
    pub fn offers_second_stage(&self) -> bool {
        !self.scalable_mode || !self.first_stage || self.second_stage_too
    }

    /// The capability register (§11.4.2) for this configuration. Out-of-range fields of a
    /// configuration that did not pass [`Config::validate`] are clamped, never a panic.
    ///
    /// Against QEMU's (`cap=1d2008c222f0606` with x-flts): same ND, SAGAW, MGAW, FRO, SLLPS,
    /// PSI, MAMV, DWD, DRD, FS1GP; NFR is 7 here (8 records) where QEMU has 0 (1 record).
    pub fn cap(&self) -> Cap {
        let sagaw = if self.aw_bits == 39 { 0b010 } else { 0b110 };
        Cap::new()
            .with_nd(DOMAIN_ID_FIELD)
            .with_cm(self.caching_mode)
            .with_sagaw(sagaw)
            .with_mgaw(self.aw_bits.clamp(1, 64) - 1)
            .with_fro(FAULT_RECORD_OFFSET_UNITS)
            .with_sllps(0b11)
            .with_psi(true)
            .with_nfr((FAULT_RECORDS - 1) as u8)
            .with_mamv(MAX_ADDRESS_MASK)
            .with_dwd(true)
            .with_drd(true)
            .with_fs1gp(self.first_stage && self.fs1gp)
    }

    /// The extended capability register (§11.4.3) for this configuration.
    ///
    /// Against QEMU's (`ecap=880000f00f5a` with x-flts and intremap): same QI, PT, IRO, SMTS,
    /// FSTS; no IR/EIM/MHMV (not emulated); C and SMPWC set because the model reads guest memory
    /// directly and so is coherent.
    pub fn ecap(&self) -> Ecap {
        let mut ecap = Ecap::new()
            .with_c(true)
            .with_qi(true)
            .with_dt(self.device_iotlb)
            .with_pt(self.pass_through)
            .with_sc(self.snoop_control)
            .with_iro(IOTLB_REGISTER_OFFSET_UNITS);
        if self.scalable_mode {
            ecap = ecap
                .with_smts(true)
                .with_smpwc(true)
                .with_fsts(self.first_stage)
                .with_ssts(self.offers_second_stage());
        }
        if let Some(bits) = self.pasid_bits {
            ecap = ecap.with_pasid(true).with_pss(bits.clamp(1, 20) - 1);
        }
        ecap
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        Config::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_qemus() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.scalable_mode && c.pass_through && c.fs1gp && c.aw_bits == 48);
    }

    #[test]
    fn every_option_and_alias_parses() {
        let c = Config::parse(
            "scalable-mode=on, fsts=yes,x-ssts=true,aw-bits=48,caching-mode=on,fs1gp=off,pt=no,\
             snoop-control=on,pasid-bits=20,device-iotlb=on,intremap=off,eim=off",
        )
        .unwrap();
        assert!(c.scalable_mode && c.first_stage && c.second_stage_too && c.caching_mode);
        assert!(!c.fs1gp && !c.pass_through && c.snoop_control && c.device_iotlb);
        assert_eq!(c.pasid_bits, Some(20));
        let c = Config::parse("x-scalable-mode=ON,x-flts=On,x-pasid-mode=on").unwrap();
        assert_eq!(c.pasid_bits, Some(DEFAULT_PASID_BITS));
        assert_eq!(Config::parse("x-pasid-mode=off").unwrap().pasid_bits, None);
        assert_eq!("aw-bits=39".parse::<Config>().unwrap().aw_bits, 39);
    }

    #[test]
    fn refusals_are_one_clear_sentence() {
        assert_eq!(
            err("x-flts=on"),
            "x-flts is only available in scalable mode"
        );
        assert_eq!(
            err("x-scalable-mode=on,x-flts=on,aw-bits=39"),
            "Scalable mode(x-flts=on): supported value for aw-bits is: 48"
        );
        assert_eq!(
            err("x-scalable-mode=on,aw-bits=52"),
            "Scalable mode(x-flts=off): supported values for aw-bits are: 39, 48"
        );
        assert_eq!(
            err("aw-bits=40"),
            "Legacy mode: supported values for aw-bits are: 39, 48"
        );
        assert_eq!(
            err("x-pasid-mode=on"),
            "Need to set scalable mode for PASID"
        );
        assert_eq!(
            err("intremap=on"),
            "intremap=on is refused: this IOMMU does not emulate interrupt remapping"
        );
        assert_eq!(
            err("eim=on"),
            "eim=on cannot be selected without intremap=on, and interrupt remapping is not emulated"
        );
        assert_eq!(
            err("x-scalable-mode=on,x-ssts=on"),
            "x-ssts only adds second stage next to x-flts; scalable mode without x-flts already offers second stage"
        );
        assert_eq!(err("bogus=1"), "Unknown intel-iommu option 'bogus'");
        assert_eq!(err("bogus"), "Unknown intel-iommu option 'bogus'");
        assert_eq!(err("pt"), "Option 'pt' needs a value (name=value)");
        assert_eq!(err("pt=on,pt=off"), "Option 'pt' is given more than once");
        assert_eq!(
            err("x-flts=on,fsts=on"),
            "Option 'fsts' is given more than once"
        );
        assert_eq!(
            err("pt=maybe"),
            "Option 'pt' takes on/off/true/false/yes/no, not 'maybe'"
        );
        assert_eq!(err("aw-bits=x"), "Option 'aw-bits' takes 39 or 48, not 'x'");
        assert_eq!(
            err("x-scalable-mode=on,pasid-bits=21"),
            "Option 'pasid-bits' takes on/off or a PASID width of 1 to 20 bits, not '21'"
        );
        let mut c = Config::first_stage();
        c.pasid_bits = Some(0);
        assert!(c.validate().is_err());
        // Unvalidated values still give registers, clamped.
        c.aw_bits = 0;
        assert_eq!((c.cap().mgaw(), c.ecap().pss()), (0, 0));
        c.aw_bits = 255;
        c.pasid_bits = Some(255);
        assert_eq!((c.cap().mgaw(), c.ecap().pss()), (63, 19));
    }

    /// QEMU `x-scalable-mode=on,x-flts=on,intremap=on`: cap=1d2008c222f0606 ecap=880000f00f5a.
    #[test]
    fn first_stage_caps_match_qemu_field_by_field() {
        let ours = Config::parse("x-scalable-mode=on,x-flts=on").unwrap();
        let (cap, ecap) = (ours.cap(), ours.ecap());
        let qcap = Cap::from_bits(0x01d2_008c_222f_0606);
        let qecap = Ecap::from_bits(0x8800_00f0_0f5a);
        assert_eq!(cap.nd(), qcap.nd());
        assert_eq!(cap.sagaw(), qcap.sagaw());
        assert_eq!(cap.mgaw(), qcap.mgaw());
        assert_eq!(cap.fro(), qcap.fro());
        assert_eq!(cap.sllps(), qcap.sllps());
        assert_eq!(cap.psi(), qcap.psi());
        assert_eq!(cap.mamv(), qcap.mamv());
        assert_eq!((cap.dwd(), cap.drd()), (qcap.dwd(), qcap.drd()));
        assert_eq!(cap.fs1gp(), qcap.fs1gp());
        assert_eq!((cap.cm(), cap.rwbf(), cap.esrtps()), (false, false, false));
        assert_eq!(
            cap.nfr() as usize + 1,
            FAULT_RECORDS,
            "QEMU has 1 record, we 8"
        );
        // Everything else in CAP agrees once NFR is aligned.
        assert_eq!(cap.with_nfr(0).into_bits(), qcap.into_bits());
        assert_eq!(ecap.qi(), qecap.qi());
        assert_eq!(ecap.pt(), qecap.pt());
        assert_eq!(ecap.iro(), qecap.iro());
        assert_eq!((ecap.smts(), ecap.fsts(), ecap.ssts()), (true, true, false));
        assert_eq!(
            (qecap.smts(), qecap.fsts(), qecap.ssts()),
            (true, true, false)
        );
        assert!(!ecap.ir() && !ecap.eim() && ecap.mhmv() == 0);
        // QEMU's value minus IR/EIM/MHMV, plus our C and SMPWC, is ours.
        let expected = qecap
            .with_ir(false)
            .with_eim(false)
            .with_mhmv(0)
            .with_c(true)
            .with_smpwc(true);
        assert_eq!(ecap, expected);
    }

    /// QEMU c068e00c put ECAP.PT into CAP (bit 6 = PHMR there); PT belongs in ECAP only.
    #[test]
    fn pass_through_is_in_ecap_not_cap() {
        let on = Config::first_stage();
        let off = Config {
            pass_through: false,
            ..on
        };
        assert!(on.ecap().pt() && !off.ecap().pt());
        assert_eq!(on.cap(), off.cap());
        assert!(!on.cap().phmr());
        assert_eq!(on.cap().into_bits() & (1 << 6), 0);
    }

    #[test]
    fn modes_select_stages_and_widths() {
        let legacy = Config::parse("aw-bits=39").unwrap();
        assert_eq!(legacy.cap().sagaw(), 0b010);
        assert_eq!(legacy.cap().mgaw(), 38);
        assert!(!legacy.ecap().smts() && !legacy.ecap().ssts() && !legacy.ecap().fsts());
        let sm = Config::parse("x-scalable-mode=on").unwrap();
        assert!(sm.ecap().smts() && sm.ecap().ssts() && !sm.ecap().fsts());
        assert!(!sm.cap().fs1gp(), "fs1gp only with x-flts");
        let both = Config::parse("x-scalable-mode=on,x-flts=on,x-ssts=on").unwrap();
        assert!(both.ecap().fsts() && both.ecap().ssts());
        let nofs1g = Config::parse("x-scalable-mode=on,x-flts=on,fs1gp=off").unwrap();
        assert!(!nofs1g.cap().fs1gp());
        let extras = Config::parse(
            "x-scalable-mode=on,caching-mode=on,snoop-control=on,device-iotlb=on,x-pasid-mode=on",
        )
        .unwrap();
        assert!(extras.cap().cm() && extras.ecap().sc() && extras.ecap().dt());
        assert!(extras.ecap().pasid());
        assert_eq!(extras.ecap().pss(), 7);
        for c in [legacy, sm, both, extras] {
            assert!(c.ecap().qi() && !c.ecap().ir() && !c.ecap().eim());
            assert_eq!(c.cap().fault_record_offset(), 0x220);
            assert_eq!(c.ecap().iotlb_register_offset(), 0xf0);
        }
    }
}
