#!/bin/sh
# A self-signed certificate for trying the compose deployment out (and for the tests):
# self-signed-cert.sh DIRECTORY [HOSTNAME]  writes DIRECTORY/fullchain.pem and privkey.pem for
# HOSTNAME (default localhost), 127.0.0.1 and ::1, valid 30 days. Browsers warn about it; in
# production mount the certificate your CA issued instead (README, Production).
set -eu
directory=$1
name=${2:-localhost}
mkdir -p "$directory"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=$name" -addext "subjectAltName=DNS:$name,IP:127.0.0.1,IP:::1" \
    -keyout "$directory/privkey.pem" -out "$directory/fullchain.pem" 2>/dev/null
chmod 644 "$directory/fullchain.pem"
echo "self-signed certificate for $name in $directory (30 days)"
