# shellcheck shell=bash
# kernel-6.1-intremap: Debian bookworm's 6.1 cloud kernel with interrupt remapping in x2APIC mode
# (intremap's checks for one emulated disk; e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=6.1
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_intremap_scenario
