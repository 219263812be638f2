# shellcheck shell=bash
# kernel-5.10-emulated: Debian bullseye's 5.10 cloud kernel on the emulated path (a virtio-blk disk
# translated by the vIOMMU), with sm-strict's checks (e2e/lib/kernel-scenarios.sh).
GUEST_KERNEL=5.10
# shellcheck source=e2e/lib/kernel-scenarios.sh
. "$E2E_DIR/lib/kernel-scenarios.sh"
kernel_emulated_scenario
