# shellcheck shell=bash
# hotplug: ACPI PCI hot-plug of an emulated disk behind the vIOMMU (`remote add-disk
# path=...,iommu=on`), data through it, `remote remove-device`, nothing of it left
# (e2e/lib/hotplug-scenario.sh).
# shellcheck source=e2e/lib/hotplug-scenario.sh
. "$E2E_DIR/lib/hotplug-scenario.sh"
hotplug_scenario emulated
