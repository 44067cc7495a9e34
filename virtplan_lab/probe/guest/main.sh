#!/bin/sh
# The virtplan probe guest's boot sequence (busybox sh, run by /init as PID 1's child).
#
# Console protocol (one line each, on the serial console; see virtplan/hosts/guestlog.py):
#   GUEST ip=A mac=M hostname=H instance-id=I value=V mem_kib=N userdata_sha256=S
#   GUEST-ERROR reason=R                 boot failed; the guest idles (ACPI shutdown still works)
#   GUEST-MEM mem_kib=N                  MemTotal changed (checked every 2 s)
#   GUEST-POWEROFF lease=released|none   ACPI power button pressed; powering off
#   GUEST-TICK seq=N uptime=U ip=A mac=M only with `probe_tick: S` in user-data: every S
#                                        seconds after the GUEST line (N counts from 1,
#                                        U is seconds since boot from /proc/uptime)
# Values are percent-encoded: '%' -> %25, space -> %20, tab -> %09.
#
# The value V comes from user-data: the first line `probe_value: V` (a top-level
# YAML key; surrounding quotes are dropped), else the first comment `#probe value=V`,
# else it is empty.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin

# Percent-encode the characters that would break the key=value line.
enc() {
    printf '%s' "$1" | sed -e 's/%/%25/g' -e 's/ /%20/g' -e 's/\t/%09/g'
}

mem_kib() {
    sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB$/\1/p' /proc/meminfo
}

# Watch MemTotal forever; print GUEST-MEM whenever it changes.  Never returns.
watch_memory() {
    last=$(mem_kib)
    while :; do
        sleep 2
        now=$(mem_kib)
        if [ "$now" != "$last" ]; then
            echo "GUEST-MEM mem_kib=$now"
            last=$now
        fi
    done
}

fail() {
    echo "GUEST-ERROR reason=$1"
    watch_memory
}

# Print GUEST-TICK every $1 seconds forever: the guest counting from inside, so a test
# sees it go on without a reboot (a live migration) and when its output stalls.
tick() {
    seq=0
    while :; do
        seq=$((seq + 1))
        now_ip=$(ip -4 addr show dev eth0 2>/dev/null | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1)
        echo "GUEST-TICK seq=$seq uptime=$(cut -d ' ' -f 1 /proc/uptime) ip=$now_ip mac=$(cat /sys/class/net/eth0/address)"
        sleep "$1"
    done
}

# The value of a top-level `KEY: value` line of a YAML file, unquoted.
yaml_value() {
    tr -d '\r' < "$2" | sed -n "s/^$1:[[:space:]]*//p" | head -n 1 \
        | sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

user_value() {
    v=$(yaml_value probe_value "$1")
    if [ -z "$v" ]; then
        v=$(tr -d '\r' < "$1" | sed -n 's/^#probe value=//p' | head -n 1)
    fi
    printf '%s' "$v"
}

# The first block device whose ISO 9660 volume id (32 bytes at offset 32808) is cidata.
find_seed() {
    tries=0
    while [ "$tries" -lt 40 ]; do
        for dev in /dev/sr* /dev/vd* /dev/sd* /dev/hd*; do
            [ -b "$dev" ] || continue
            label=$(dd if="$dev" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000' | tr 'A-Z' 'a-z')
            if [ "$label" = cidata ]; then
                echo "$dev"
                return 0
            fi
        done
        tries=$((tries + 1))
        sleep 0.25
    done
    return 1
}

wait_for_path() {
    tries=0
    while [ ! -e "$1" ]; do
        [ "$tries" -ge 40 ] && return 1
        tries=$((tries + 1))
        sleep 0.25
    done
}

mkdir -p /proc /sys /dev /run /tmp /seed
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /run/probe /var && ln -sf /run /var/run

while read -r module; do
    modprobe "$module" || echo "probe: modprobe $module failed"
done < /etc/probe/modules

acpid -d -c /etc/acpi -p /run/acpid.pid >/dev/null 2>&1 &
# commands typed on the serial console run (`virtplan console`), from here on even if the
# steps below fail; no prompt and no line editing, so the report stays the console's last
# line until someone types there (Enter on a terminal sends CR: the line discipline makes
# it a newline)
sh -c 'stty icrnl onlcr; while IFS= read -r line; do eval "$line"; done' </dev/ttyS0 >/dev/ttyS0 2>&1 &

seed_dev=$(find_seed) || fail no-seed
mount -t iso9660 -o ro "$seed_dev" /seed || fail seed-mount
[ -f /seed/meta-data ] || fail no-meta-data
hostname=$(yaml_value local-hostname /seed/meta-data)
instance_id=$(yaml_value instance-id /seed/meta-data)
value=""
userdata_sha=""
tick_every=""
if [ -f /seed/user-data ]; then
    value=$(user_value /seed/user-data)
    userdata_sha=$(sha256sum /seed/user-data | cut -d ' ' -f 1)
    tick_every=$(yaml_value probe_tick /seed/user-data)
fi
[ -n "$hostname" ] && hostname "$hostname"

wait_for_path /sys/class/net/eth0 || fail no-eth0
mac=$(cat /sys/class/net/eth0/address)
ip link set lo up
ip link set eth0 up
# dnsmasq pings every new address for up to 3 s before offering it, one client at a time,
# and udhcpc -n gives up as soon as one REQUEST goes unanswered three times (-T s apart):
# with several guests booting at once on a dynamic range, start it again (about 60 s in all).
tries=0
until udhcpc -i eth0 -s /etc/probe/udhcpc.sh -p /run/udhcpc.pid -R -n -t 5 -T 2 \
        ${hostname:+-x "hostname:$hostname"} >>/run/udhcpc.log 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 6 ] || fail dhcp-no-lease
done
ip=$(cat /run/probe/ip 2>/dev/null)
[ -n "$ip" ] || fail dhcp-no-address

echo "GUEST ip=$ip mac=$mac hostname=$(enc "$hostname") instance-id=$(enc "$instance_id")" \
    "value=$(enc "$value") mem_kib=$(mem_kib) userdata_sha256=$userdata_sha"
[ -n "$tick_every" ] && tick "$tick_every" &
watch_memory
