#!/bin/sh
# The proxy container: render the mounted template, refuse to start without a certificate, run
# the command (nginx in the foreground).
set -eu
for file in fullchain.pem privkey.pem; do
    if [ ! -r "$NGINX_CERT_DIR/$file" ]; then
        echo "proxy: no $NGINX_CERT_DIR/$file: mount the certificate directory" \
             "(TLS_CERT_DIR, see the README's Production section; 'make certs' makes a" \
             "self-signed one for trying it out)" >&2
        exit 1
    fi
done
render-config.sh /etc/nginx/templates/lms.conf.template /etc/nginx/conf.d/lms.conf
exec "$@"
