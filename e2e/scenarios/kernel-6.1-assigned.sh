# shellcheck shell=bash
# kernel-6.1-assigned: Debian bookworm's 6.1 cloud kernel on the assigned path (a disk behind the
# software host IOMMU), with assigned's checks (e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=6.1
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_assigned_scenario
