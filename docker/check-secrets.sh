#!/bin/sh
# Refuse to start the stack while a secret in .env is empty or still the template's <placeholder>.
# Usage: check-secrets.sh NAME...   (each NAME an environment variable, named as in .env-template)
# Prints one line per secret to set, with how to make one, and exits 1; prints nothing and exits 0 when
# every secret is set. Plain POSIX sh, so it runs in any image of the stack: airflow-init runs it before
# Airflow, storage-secrets before MinIO, monitoring-secrets before Grafana.
set -u

how_to_make() {
    case "$1" in
        AIRFLOW_FERNET_KEY)
            echo 'python3 -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"' ;;
        AIRFLOW_JWT_SECRET|AIRFLOW_API_SECRET_KEY)
            echo 'openssl rand -hex 32' ;;
        *_ACCESS_KEY|*_USER)
            echo 'any name, e.g. helical-$(openssl rand -hex 4)' ;;
        *)
            echo 'openssl rand -base64 24' ;;
    esac
}

missing=0
for name in "$@"; do
    case "$name" in *[!A-Za-z0-9_]*|"") echo "error: '$name' is not a variable name" >&2; exit 2 ;; esac
    eval "value=\${$name-}"  # indirect lookup; the name was checked above
    case "$value" in
        "")
            echo "error: set $name in .env (it is empty); make one with: $(how_to_make "$name")" >&2
            missing=1 ;;
        "<"*">")
            echo "error: set $name in .env (it is still the placeholder $value); make one with: $(how_to_make "$name")" >&2
            missing=1 ;;
    esac
done
exit "$missing"
