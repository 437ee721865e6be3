#!/usr/bin/env bash
# Mutation testing of the pure core with cargo-mutants, natively (no WASI, no Redis): the
# RESP codec, URL/option parsing, cluster slots and list cursors, and the shared model
# (errors, Redis error codes, ids, documents and merge patches, redaction). Which files is
# `.cargo/mutants.toml`'s `examine_globs`.
#
# Not part of CI's required run: it builds and tests the crate once per mutant (~600 of them),
# which takes far longer than the test suite. Bounded: it stops after MUTANTS_TIME_LIMIT
# seconds (default 5400) and reports what it reached.
#
#   scripts/mutants.sh                      # everything (results in target/mutants/mutants.out)
#   scripts/mutants.sh --file src/resp.rs   # only these files (the config's list is then
#                                           # not read); any further cargo-mutants options
set -euo pipefail
cd "$(dirname "$0")/.."

version=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -qF "$version"; then
    cargo install --locked cargo-mutants --version "$version"
fi

mkdir -p target/mutants
# `--file` on the command line adds to the config's list rather than narrowing it.
narrow=()
for arg in "$@"; do
    if [ "$arg" = --file ] || [ "$arg" = -f ]; then
        narrow=(--no-config --test-workspace=false)
    fi
done

status=0
timeout "${MUTANTS_TIME_LIMIT:-5400}" cargo mutants \
    --package taskstore --package taskstore-model \
    --jobs "${MUTANTS_JOBS:-1}" \
    --output target/mutants \
    "${narrow[@]}" "$@" || status=$?

out=target/mutants/mutants.out
for outcome in caught missed timeout unviable; do
    printf '%-9s %s\n' "$outcome" "$(wc -l < "$out/$outcome.txt" 2>/dev/null || echo 0)"
done
# cargo-mutants exits 2 when some mutants were missed, 3 on timeouts; 124: the time limit.
exit "$status"
