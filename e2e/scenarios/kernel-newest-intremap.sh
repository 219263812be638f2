# shellcheck shell=bash
# kernel-newest-intremap: the newest Debian cloud kernel (trixie-backports) cloud kernel with interrupt remapping in x2APIC mode
# (intremap's checks for one emulated disk; e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=newest
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_intremap_scenario
