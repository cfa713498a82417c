#!/bin/sh
# nginx for docker-compose.yml: deploy/nginx.conf with the compose network's DNS server as its
# resolver (Docker's is 127.0.0.11, Podman's the network's gateway: /etc/resolv.conf says).
set -eu
dns=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf)
[ -n "$dns" ] || { echo "nginx-start: no nameserver in /etc/resolv.conf" >&2; exit 1; }
case "$dns" in *:*) dns="[$dns]" ;; esac
sed "s/@RESOLVER@/$dns/" /etc/nginx/gateway.conf.in > /etc/nginx/conf.d/default.conf
exec nginx -g 'daemon off;'
