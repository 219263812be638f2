# shellcheck shell=bash
# kernel-newest-assigned: the newest Debian cloud kernel (trixie-backports) on the assigned path (a
# disk behind the software host IOMMU), with assigned's checks (e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=newest
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_assigned_scenario
