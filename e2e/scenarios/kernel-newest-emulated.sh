# shellcheck shell=bash
# kernel-newest-emulated: the newest Debian cloud kernel (trixie-backports) on the emulated path (a
# virtio-blk disk translated by the vIOMMU), with sm-strict's checks (e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=newest
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_emulated_scenario
