# shellcheck shell=bash
# kernel-5.10-assigned: Debian bullseye's 5.10 cloud kernel on the assigned path (a disk behind the
# software host IOMMU), with assigned's checks (e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=5.10
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_assigned_scenario
