#!/usr/bin/env bash
# Fails when any token or refresh token the identity-provider double issued during
# the test run (Entra Agent ID's exchange tokens T1 and T2 among them), any client
# assertion or federated credential it received, any line of the test
# certificates' private keys, or any of its fixed credentials, appears in any log
# of that run: the service's logs (in-process and spawned) and the test runner's
# own output.
set -euo pipefail
dir=${1:-target/tmp/test-logs}
patterns=$(mktemp)
trap 'rm -f "$patterns"' EXIT
# Empty lines would match everything.
cat "$dir"/issued-*.txt 2>/dev/null | grep -v '^$' > "$patterns" || true
issued=$(wc -l < "$patterns")
if [ "$issued" -lt 10 ]; then
    echo "check-secrets: only $issued issued tokens recorded in $dir; did the tests run?"
    exit 1
fi
printf '%s\n' client-secret-value-for-tests agent-password-for-tests >> "$patterns"
if grep -rlF -f "$patterns" --exclude='issued-*.txt' "$dir"; then
    echo "check-secrets: a token or secret reached the log files listed above"
    exit 1
fi
files=$(find "$dir" -type f ! -name 'issued-*.txt' | wc -l)
echo "check-secrets: $issued issued tokens, assertions and key lines and 2 credentials searched for in $files log files: none found"
