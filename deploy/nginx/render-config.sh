#!/bin/sh
# Render the proxy's configuration: render-config.sh TEMPLATE OUTPUT
# Replaces the ${NGINX_...} settings the template names with their values from the environment
# (every one must be set) and nothing else, so nginx's own $variables stay as they are. Used by
# the proxy image's entrypoint and by tests/test_proxy.py, so both run the same file.
set -eu
template=$1
output=$2
names=$(grep -o '\${NGINX_[A-Z_]*}' "$template" | sort -u | tr '\n' ' ')
for name in $names; do
    variable=${name#??}
    variable=${variable%?}
    eval "value=\${$variable:-}"
    if [ -z "$value" ]; then
        echo "render-config: $variable is not set" >&2
        exit 1
    fi
done
envsubst "$names" < "$template" > "$output"
