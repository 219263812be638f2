# shellcheck shell=bash
# dma-fault: the VMM's test-only --test-dma-fault makes the disk read from an IOVA the guest
# never mapped; the guest's DMAR driver must log that fault with the address and reason 0x71
# (first-stage entry not present).
FAULT_IOVA=0xdead000
DISKS="d0=8M"
CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
ARGS=(--cmdline "$CMDLINE" --iommu intel,x-scalable-mode=on,x-flts=on --disk path=@d0,iommu=on
    --test-dma-fault "$FAULT_IOVA")
QEMU_ARGS=()

guest() {
    cat <<'GUEST'
dmesg_has 'DMAR: Intel\(R\) Virtualization Technology for Directed I/O' "DMAR is up"
dev=$(disk_dev 0)
dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null || true
i=0
until dmesg | grep -q 'DMAR: \[DMA .*fault addr'; do
    [ "$i" -lt 100 ] || fail "no DMAR fault in dmesg after 10 s"
    sleep 0.1
    i=$((i + 1))
done
dmesg | grep 'DMAR: \[DMA .*fault addr' | sed 's/^/GUEST-FAULT /'
ok "a DMAR fault was logged"
GUEST
}

check() {
    guest_ran "$1" &&
        require "^GUEST-FAULT .*DMAR: \[DMA (Read|Write)[^]]*\] Request device \[[0-9a-f:.]+\] fault addr $FAULT_IOVA \[fault reason 0x71\]" \
            "the guest's DMAR fault line does not show fault addr $FAULT_IOVA with fault reason 0x71: $(grep -m1 '^GUEST-FAULT' "$OUT" | cut -c13-200)"
}
