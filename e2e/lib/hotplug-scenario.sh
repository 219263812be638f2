# shellcheck shell=bash
# e2e/lib/hotplug-scenario.sh: ACPI PCI hot-plug of a disk while a scalable-mode first-stage
# guest runs, for scenarios/hotplug.sh (an emulated disk behind the vIOMMU) and
# scenarios/hotplug-assigned.sh (a disk assigned through the software host IOMMU). Next to the
# VMM, the side script creates a disk image and adds it with `vtd-nest remote add-disk` (it
# lands at 00:02.0 as disk1); the guest's acpiphp sees the slot's device check, the vIOMMU driver
# puts the new function in a strict DMA domain, and the guest writes a pattern through it with
# direct I/O and reads it back (GUEST-DISK hot). The side then sees the disk's I/O in `remote
# counters` and its entry in `remote iommu-state` (emulated: entries the unit caches for it;
# assigned: its accel binding and host IOMMU objects live), removes it with `remote
# remove-device disk1` (the guest ejects it through _EJ0), checks that its counters, its state
# entry and (assigned) its binding, HWPTs and host device are gone, waits for the guest to see
# 00:02.0 gone, hashes the image (HOST-DISK hot: the bytes the guest wrote reached the file) and
# shuts the VM down. d0 carries the guest's marks (READY, DONE, GONE), read by the side with
# direct I/O.
#
#   hotplug_scenario emulated|assigned

hotplug_scenario() {
    HOTPLUG_KIND=$1
    DISKS="d0=1M"
    CMDLINE="intel_iommu=on,sm_on iommu.strict=1"
    API_SOCKET=/tmp/vtd-nest-e2e-hotplug.sock
    HOT_IMAGE=/tmp/vtd-nest-e2e-hot.img
    case "$HOTPLUG_KIND" in
    emulated) IOMMU=intel,x-scalable-mode=on,x-flts=on HOT_SPEC=iommu=on ;;
    # Device assignment needs caching-mode=on (see assigned.sh). With interrupt remapping, so
    # the split irqchip: the hot-plug event reaches the guest through the VMM's IOAPIC and a
    # remapped pin, and the new disk's MSI-X through the remapping table.
    assigned) IOMMU=intel,x-scalable-mode=on,x-flts=on,caching-mode=on,intremap=on,eim=on
        HOT_SPEC=assigned=sim ;;
    *) echo "hotplug_scenario: unknown kind $HOTPLUG_KIND" >&2; return 1 ;;
    esac
    ARGS=(--cmdline "$CMDLINE" --iommu "$IOMMU" --disk path=@d0 --api-socket "$API_SOCKET")
    QEMU_ARGS=()
}

guest() {
    cat <<'GUEST'
report_cap
mark=$(disk_dev 0)
put_mark "$mark" HOTPLUG-GUEST-READY
hot=/sys/bus/pci/devices/0000:00:02.0
i=0
until ls -d "$hot"/virtio*/block/vd* >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le 1200 ] || fail "no hot-added disk at 00:02.0 after 120 s (dmesg: $(dmesg | grep -Ei 'acpiphp|pci 0000:00:02|ged' | tail -n 4 | tr '\n' '|'))"
    sleep 0.1
done
b=$(ls -d "$hot"/virtio*/block/vd*)
dev=/dev/${b##*/}
ok "hot-added disk $dev at 00:02.0"
[ -e "$hot/iommu_group" ] || fail "the hot-added function has no IOMMU group"
ok "00:02.0 is in IOMMU group $(basename "$(readlink "$hot/iommu_group")")"
data_check hot "$dev" "hot-added disk behind the vIOMMU"
put_mark "$mark" HOTPLUG-GUEST-DONE
unplugged "$hot" 120
[ ! -e "$dev" ] || fail "$dev is still there after the unplug"
ok "00:02.0 and $dev are gone"
put_mark "$mark" HOTPLUG-GUEST-GONE
while :; do sleep 1; done
GUEST
}

side() {
    cat <<SIDE
sock=$API_SOCKET
img=$HOT_IMAGE
kind=$HOTPLUG_KIND
spec=$HOT_SPEC
SIDE
    side_prelude HOTPLUG 1
    cat <<'SIDE'
wait_mark HOTPLUG-GUEST-READY 240
rm -f "$img"
truncate -s 4M "$img" || die "cannot create $img"
added=$(r add-disk "path=$img,$spec") || die "add-disk failed: $added"
echo "$added" | grep -q '"id": "disk1"' || die "add-disk did not answer disk1: $added"
echo "$added" | grep -q '"bdf": "0000:00:02.0"' || die "add-disk did not answer 00:02.0: $added"
say "OK add-disk disk1 at 00:02.0"
wait_mark HOTPLUG-GUEST-DONE 180
r counters | grep -Eq '^counter disk1_write_bytes [1-9]' || die "no writes counted for disk1: $(r counters | grep disk1_ | tr '\n' ' ')"
r counters | grep -Eq '^counter disk1_read_bytes [1-9]' || die "no reads counted for disk1"
say "OK disk1 counters"
state=$(r iommu-state) || die "iommu-state failed"
echo "$state" | grep -q '00:02.0' || die "iommu-state does not list 00:02.0: $state"
live() { r counters | sed -n "s/^counter $1 //p"; }
if [ "$kind" = emulated ]; then
    r iommu-state --json | grep -Eq '"cached_entries": [1-9]' ||
        die "the unit caches nothing for 00:02.0: $(r iommu-state --json | grep cached_entries)"
    say "OK iommu-state lists 00:02.0 with cached entries"
else
    echo "$state" | grep -q 'path: nested' || die "iommu-state shows no nested binding: $state"
    for c in accel_live_bindings host_live_nested_hwpts host_live_nest_parents host_live_attached_devices; do
        [ "$(live $c)" = 1 ] || die "$c is $(live $c), want 1 while disk1 is attached"
    done
    say "OK iommu-state lists 00:02.0 nested; one binding, nested HWPT, nest parent, device"
fi
r remove-device disk1 || die "remove-device disk1 failed"
say "OK remove-device disk1"
left=$(r counters | grep -c '^counter disk1_')
[ "$left" = 0 ] || die "$left disk1 counters are left"
r iommu-state | grep -q '00:02.0' && die "iommu-state still lists 00:02.0"
r iommu-state --json | grep -q '"disk1"' && die "iommu-state --json still names disk1"
if [ "$kind" = assigned ]; then
    for c in accel_live_bindings host_live_nested_hwpts host_live_nest_parents host_live_attached_devices; do
        [ "$(live $c)" = 0 ] || die "$c is $(live $c) after the unplug"
    done
fi
err=$(r remove-device disk1 2>&1) && die "a second remove-device disk1 succeeded"
echo "$err" | grep -q "This VM has no device 'disk1'" || die "second remove-device: $err"
say "OK nothing of disk1 is left"
wait_mark HOTPLUG-GUEST-GONE 120
echo "HOST-DISK hot $(sha256sum "$img" | cut -d' ' -f1)"
rm -f "$img"
r shutdown || die "shutdown failed"
say "DONE"
SIDE
}

check() {
    side_ran HOTPLUG "$1" &&
        require '^HOTPLUG-GUEST-READY' "the guest never got to its ready mark" &&
        require '^HOTPLUG-GUEST-GONE' "the guest never saw the disk go" &&
        disk_hash_matches hot && cap_matches && hotplug_counters
}

hotplug_counters() {
    case "$HOTPLUG_KIND" in
    emulated) counter_is translations -gt 0 ;;
    assigned) counter_is accel_nested_binds -gt 0 && counter_is host_live_attached_devices -eq 0 &&
        counter_is host_live_nested_hwpts -eq 0 && counter_is translations -eq 0 ;;
    esac
}
