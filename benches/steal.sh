# benches/steal.sh — sourced by the bench scripts (ab.sh, bench.sh, io-steal.sh, stages.sh):
# the CPU the hypervisor takes from this VM ("steal", /proc/stat's 9th field), read the same
# way everywhere. A run's stolen seconds are the difference of two readings.

# Ticks stolen since boot, all cores: an integer, so that a difference keeps its precision
# however long the VM has been up (awk's default print of seconds kept 6 digits).
steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }

# stolen_since TICKS: the seconds stolen since that reading of steal_ticks, 2 decimals.
stolen_since() {
    awk -v a="$1" -v b="$(steal_ticks)" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz}'
}
