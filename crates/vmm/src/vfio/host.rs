//! What the host must offer before a device can be assigned, read from sysfs: the device is
//! bound to vfio-pci and its IOMMU group is viable (every other member is unbound, or bound to
//! a VFIO or stub driver, or is a bridge).

use std::path::{Path, PathBuf};

use super::Error;

/// Drivers a group member may have without making the group unviable (the kernel's
/// `vfio_dev_driver_allowed` and bridges' `pcieport`).
const VIABLE_DRIVERS: [&str; 3] = ["vfio-pci", "pci-stub", "pcieport"];

/// The name of the driver bound to the device at `sysfs`, if any.
fn driver(sysfs: &Path) -> Option<String> {
    let link = std::fs::read_link(sysfs.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Checks the device at `sysfs` can be assigned; returns its PCI address.
pub fn check_device(sysfs: &Path) -> Result<String, Error> {
    let address = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !sysfs.join("config").is_file() {
        return Err(Error::NoDevice(sysfs.to_owned()));
    }
    match driver(sysfs) {
        Some(d) if d == "vfio-pci" => {}
        found => {
            return Err(Error::NotVfioPci {
                address,
                driver: found,
            });
        }
    }
    let group = std::fs::read_link(sysfs.join("iommu_group"))
        .map_err(|_| Error::NoGroup(address.clone()))?;
    let group_name = group
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let members = sysfs.join("iommu_group").join("devices");
    let entries = std::fs::read_dir(&members).map_err(|_| Error::NoGroup(address.clone()))?;
    for entry in entries.flatten() {
        let member: PathBuf = entry.path();
        if let Some(d) = driver(&member)
            && !VIABLE_DRIVERS.contains(&d.as_str())
        {
            return Err(Error::GroupNotViable {
                address,
                group: group_name,
                member: entry.file_name().to_string_lossy().into_owned(),
                driver: d,
            });
        }
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fake sysfs: devices/<addr> with config, driver and iommu_group links.
    fn tree(name: &str, members: &[(&str, Option<&str>)]) -> Tree {
        let root =
            std::env::temp_dir().join(format!("vtd-nest-sysfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let group = root.join("kernel/iommu_groups/7");
        std::fs::create_dir_all(group.join("devices")).unwrap();
        for (addr, drv) in members {
            let dev = root.join("devices").join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("config"), [0u8; 64]).unwrap();
            symlink(&group, dev.join("iommu_group")).unwrap();
            symlink(&dev, group.join("devices").join(addr)).unwrap();
            if let Some(d) = drv {
                let dir = root.join("drivers").join(d);
                std::fs::create_dir_all(&dir).unwrap();
                symlink(&dir, dev.join("driver")).unwrap();
            }
        }
        Tree(root)
    }

    #[test]
    fn a_vfio_pci_device_in_a_viable_group_is_accepted() {
        let t = tree(
            "ok",
            &[
                ("0000:00:04.0", Some("vfio-pci")),
                ("0000:00:1c.0", Some("pcieport")),
            ],
        );
        let dev = t.0.join("devices/0000:00:04.0");
        assert_eq!(check_device(&dev).unwrap(), "0000:00:04.0");
    }

    #[test]
    fn each_refusal_is_one_sentence() {
        let t = tree(
            "bad",
            &[("0000:00:04.0", Some("nvme")), ("0000:00:05.0", None)],
        );
        let e = check_device(&t.0.join("devices/0000:00:04.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Device 0000:00:04.0 is bound to nvme, not vfio-pci: write vfio-pci to its driver_override, unbind it and write its address to /sys/bus/pci/drivers_probe"
        );
        let e = check_device(&t.0.join("devices/0000:00:05.0")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Device 0000:00:05.0 has no driver, not vfio-pci:"),
            "{e}"
        );
        let e = check_device(&t.0.join("devices/0000:00:09.0")).unwrap_err();
        assert!(e.to_string().contains("is not a PCI device"), "{e}");

        let t = tree(
            "group",
            &[
                ("0000:00:04.0", Some("vfio-pci")),
                ("0000:00:04.1", Some("e1000e")),
            ],
        );
        let e = check_device(&t.0.join("devices/0000:00:04.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "The IOMMU group 7 of device 0000:00:04.0 is not viable: 0000:00:04.1 in the same group is bound to e1000e; bind every device of the group to vfio-pci or unbind it"
        );
        assert!(e.is_refusal());
    }
}
