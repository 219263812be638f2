# shellcheck shell=bash
# kernel-5.10-intremap: Debian bullseye's 5.10 cloud kernel with interrupt remapping in x2APIC mode
# (intremap's checks for one emulated disk; e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=5.10
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_intremap_scenario
