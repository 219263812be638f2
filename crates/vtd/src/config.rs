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
//! | `intremap` | auto | ECAP.IR and MHMV = 15: interrupt remapping (chapter 5) |
//! | `eim` | auto | ECAP.EIM: x2APIC (32-bit) destinations; needs `intremap` |
//!
//! **Interrupt remapping** depends on the VMM's interrupt controller, which the option string
//! does not know: `intremap` and `eim` are kept as on/off/auto by [`Config::parse`], and the VMM
//! calls [`Config::resolve_interrupt_remapping`] once it knows its irqchip. Until then `auto`
//! offers nothing. The rules are QEMU's (`x86_iommu_realize`, `vtd_decide_config`):
//!
//! | irqchip | `intremap=auto` | `intremap=on` | `eim=auto` | `eim=on` |
//! |---|---|---|---|---|
//! | `kernel` (IOAPIC in KVM) | off | refused | off | refused (needs intremap) |
//! | `split` (IOAPIC in the VMM) | on | on | on with X2APIC_API | on; refused without X2APIC_API |
//!
//! One difference: QEMU refuses `eim=auto` on a kernel without `KVM_CAP_X2APIC_API` (the
//! `auto` resolves to on, then fails); here `auto` resolves to off there.

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
/// ECAP.MHMV: the largest index mask of an index-selective interrupt-entry-cache invalidation
/// (QEMU's value).
pub const MAX_HANDLE_MASK: u8 = 0xf;
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
    /// An on/off/auto option got something else.
    #[error("Option '{option}' takes on/off/auto, not '{value}'")]
    NotOnOffAuto {
        /// The option name.
        option: String,
        /// The value given.
        value: String,
    },
    /// Interrupt remapping with the interrupt controller entirely in KVM.
    #[error("Interrupt Remapping cannot work with --irqchip kernel, please use '--irqchip split'.")]
    InterruptRemappingNeedsSplitIrqchip,
    /// x2APIC interrupt remapping without interrupt remapping.
    #[error("eim=on cannot be selected without intremap=on")]
    EimWithoutInterruptRemapping,
    /// x2APIC interrupt remapping on a kernel without KVM_CAP_X2APIC_API.
    #[error("eim=on requires support on the KVM side(X2APIC_API, first shipped in v4.7)")]
    EimWithoutX2apicApi,
}

/// A QEMU `OnOffAuto` option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOffAuto {
    /// Asked for.
    On,
    /// Refused.
    Off,
    /// Decided by [`Config::resolve_interrupt_remapping`].
    #[default]
    Auto,
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
    /// `intremap`: interrupt remapping (ECAP.IR); `Auto` offers nothing until resolved.
    pub intremap: OnOffAuto,
    /// `eim`: extended interrupt mode (ECAP.EIM); `Auto` offers nothing until resolved.
    pub eim: OnOffAuto,
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
            intremap: OnOffAuto::Auto,
            eim: OnOffAuto::Auto,
        }
    }
}

fn parse_on_off_auto(option: &str, value: &str) -> Result<OnOffAuto, ConfigError> {
    if value.eq_ignore_ascii_case("auto") {
        return Ok(OnOffAuto::Auto);
    }
    match parse_bool(option, value) {
        Ok(true) => Ok(OnOffAuto::On),
        Ok(false) => Ok(OnOffAuto::Off),
        Err(_) => Err(ConfigError::NotOnOffAuto {
            option: option.to_string(),
            value: value.to_string(),
        }),
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
            "intremap" => self.intremap = parse_on_off_auto(name, value)?,
            "eim" => self.eim = parse_on_off_auto(name, value)?,
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
        if self.eim == OnOffAuto::On && self.intremap == OnOffAuto::Off {
            return Err(ConfigError::EimWithoutInterruptRemapping);
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

    /// Decides `intremap` and `eim` once the VMM knows its interrupt controller: `split_irqchip`
    /// (the IOAPIC is the VMM's, the local APICs KVM's) and `x2apic_api` (KVM_CAP_X2APIC_API
    /// can be enabled). Applies QEMU's rules (see the module docs); afterwards neither is
    /// `Auto`.
    pub fn resolve_interrupt_remapping(
        &mut self,
        split_irqchip: bool,
        x2apic_api: bool,
    ) -> Result<(), ConfigError> {
        let intremap = match self.intremap {
            OnOffAuto::On if !split_irqchip => {
                return Err(ConfigError::InterruptRemappingNeedsSplitIrqchip);
            }
            OnOffAuto::On => true,
            OnOffAuto::Off => false,
            OnOffAuto::Auto => split_irqchip,
        };
        let eim = match self.eim {
            OnOffAuto::On if !intremap => return Err(ConfigError::EimWithoutInterruptRemapping),
            OnOffAuto::On if !x2apic_api => return Err(ConfigError::EimWithoutX2apicApi),
            OnOffAuto::On => true,
            OnOffAuto::Off => false,
            OnOffAuto::Auto => intremap && x2apic_api,
        };
        let on_off = |on: bool| if on { OnOffAuto::On } else { OnOffAuto::Off };
        self.intremap = on_off(intremap);
        self.eim = on_off(eim);
        Ok(())
    }

    /// Whether interrupt remapping is offered (`intremap` resolved to on).
    pub fn interrupt_remapping(&self) -> bool {
        self.intremap == OnOffAuto::On
    }

    /// Whether x2APIC interrupt remapping is offered (`eim` on, with `intremap`).
    pub fn extended_interrupt_mode(&self) -> bool {
        self.interrupt_remapping() && self.eim == OnOffAuto::On
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
    /// Against QEMU's (`ecap=880000f00f5a` with x-flts and intremap): the same bits, plus C
    /// and SMPWC because the model reads guest memory directly and so is coherent.
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
        if self.interrupt_remapping() {
            ecap = ecap
                .with_ir(true)
                .with_mhmv(MAX_HANDLE_MASK)
                .with_eim(self.extended_interrupt_mode());
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
            err("intremap=off,eim=on"),
            "eim=on cannot be selected without intremap=on"
        );
        assert_eq!(
            err("intremap=maybe"),
            "Option 'intremap' takes on/off/auto, not 'maybe'"
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

    /// QEMU's rules for `intremap` and `eim` against the interrupt controller, and its
    /// sentences.
    #[test]
    fn interrupt_remapping_resolves_like_qemu() {
        let resolved = |options: &str, split: bool, x2apic_api: bool| {
            let mut c = Config::parse(options).unwrap();
            c.resolve_interrupt_remapping(split, x2apic_api)
                .map(|()| (c.interrupt_remapping(), c.extended_interrupt_mode()))
                .map_err(|e| e.to_string())
        };
        assert_eq!(resolved("", false, true), Ok((false, false)));
        assert_eq!(resolved("", true, true), Ok((true, true)));
        assert_eq!(resolved("", true, false), Ok((true, false)));
        assert_eq!(
            resolved("intremap=on,eim=off", true, true),
            Ok((true, false))
        );
        assert_eq!(resolved("intremap=off", true, true), Ok((false, false)));
        assert_eq!(resolved("eim=on", true, true), Ok((true, true)));
        assert_eq!(resolved("eim=off", false, false), Ok((false, false)));
        assert_eq!(
            resolved("intremap=on", false, true),
            Err("Interrupt Remapping cannot work with --irqchip kernel, please use '--irqchip split'.".into())
        );
        assert_eq!(
            resolved("eim=on", false, true),
            Err("eim=on cannot be selected without intremap=on".into())
        );
        assert_eq!(
            resolved("intremap=on,eim=on", true, false),
            Err(
                "eim=on requires support on the KVM side(X2APIC_API, first shipped in v4.7)".into()
            )
        );
        // Unresolved, `auto` offers nothing; `on` is offered as it is.
        let c = Config::parse("intremap=auto,eim=auto").unwrap();
        assert!(!c.ecap().ir() && !c.ecap().eim() && c.ecap().mhmv() == 0);
        let c = Config::parse("intremap=on").unwrap();
        assert!(c.ecap().ir() && !c.ecap().eim() && c.ecap().mhmv() == MAX_HANDLE_MASK);
    }

    /// QEMU `x-scalable-mode=on,x-flts=on,intremap=on`: cap=1d2008c222f0606 ecap=880000f00f5a.
    #[test]
    fn first_stage_caps_match_qemu_field_by_field() {
        let mut ours = Config::parse("x-scalable-mode=on,x-flts=on,intremap=on").unwrap();
        ours.resolve_interrupt_remapping(true, true).unwrap();
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
        assert!(ecap.ir() && ecap.eim() && ecap.mhmv() == qecap.mhmv());
        // QEMU's value plus our C and SMPWC is ours, bit for bit.
        assert_eq!(ecap, qecap.with_c(true).with_smpwc(true));
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
