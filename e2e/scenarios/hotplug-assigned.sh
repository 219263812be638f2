# shellcheck shell=bash
# hotplug-assigned: ACPI PCI hot-plug of a disk assigned through the software host IOMMU
# (`remote add-disk path=...,assigned=sim`): nested binds, data through it, `remote
# remove-device`, its accel binding, nested HWPT, nest parent and host device gone
# (e2e/lib/hotplug-scenario.sh).
# shellcheck source=e2e/lib/hotplug-scenario.sh
. "$E2E_DIR/lib/hotplug-scenario.sh"
hotplug_scenario assigned
