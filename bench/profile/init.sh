# shellcheck shell=sh
# bench/profile/init.sh: the guest of every bench/profile job: says when the reads start, then
# reads its disk with 4 KiB direct reads for the window and 3 s more (WINDOW_US, which
# bench/profile puts in front of it), and prints how many reads it made and their mean time.
now_us() { awk '/^now at/ { printf "%d\n", $3 / 1000; exit }' /proc/timer_list; }
echo PROFILE-START
t0=$(now_us); n=0
while [ $(( $(now_us) - t0 )) -lt "$WINDOW_US" ]; do
    dd if=/dev/vda of=/dev/null bs=4k count=500 skip=$(( n % 15000 )) iflag=direct 2>/dev/null
    n=$((n + 500))
done
echo "PROFILE-READS $n $(( ($(now_us) - t0) / n ))"
