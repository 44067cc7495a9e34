#!/bin/sh
# udhcpc event script of the probe guest: configures eth0, records the address in /run/probe/ip.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        rm -f /run/probe/ip
        ;;
    bound|renew)
        if [ "$(cat /run/probe/ip 2>/dev/null)" != "$ip" ]; then
            ip -4 addr flush dev "$interface"
            ip addr add "$ip/${mask:-24}" dev "$interface"
        fi
        if [ -n "$router" ]; then
            ip route replace default via "${router%% *}" dev "$interface"
        fi
        echo "$ip" > /run/probe/ip
        ;;
esac
exit 0
