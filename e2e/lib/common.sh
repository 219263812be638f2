# shellcheck shell=bash
# e2e/lib/common.sh: helpers shared by e2e/prepare, e2e/run and e2e/suite (sourced, not run).

E2E_CACHE="${VTD_NEST_E2E_CACHE:-/var/cache/vtd-nest/e2e}"

# The guest kernels besides the default 6.12 (l2/): e2e/prepare unpacks each into l2-<tag>/.
# 5.10 (bullseye), 6.1 (bookworm), newest (the highest cloud kernel in trixie-backports).
GUEST_KERNEL_TAGS="5.10 6.1 newest"

log() {
    echo "e2e: $*" >&2
}

die() {
    echo "e2e: error: $*" >&2
    exit 2
}

# cpio_of_dir DIR OUT: an uncompressed newc archive of DIR's contents, owned by root. Archives
# concatenate: the kernel unpacks every one in turn, so a base plus extra pieces is a valid
# initramfs without copying the base.
cpio_of_dir() {
    local dir="$1" out="$2"
    (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out"
}
