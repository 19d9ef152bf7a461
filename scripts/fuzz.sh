#!/usr/bin/env bash
# Fuzz what the coordinator reads from untrusted bytes, for a bounded time,
# on the stable toolchain of a fresh machine (crates.io only).
#
#   scripts/fuzz.sh SECONDS        # total fuzzing time, split across targets
#   FUZZ_TARGETS="read_log read_snapshot" scripts/fuzz.sh 60
#
# Targets (fuzz/fuzz_targets/): decode_request (frames, handshake, request
# bodies), server_requests (frames to validated, applied, logged txns and
# watch events), read_log and log_records (the log reader recovery runs,
# raw and with valid framing), read_snapshot (the snapshot reader).
#
# How: cargo-fuzz and libFuzzer (libfuzzer-sys builds it with the system's
# C++ compiler). With `--sanitizer none`, cargo-fuzz passes only stable
# codegen options (LLVM's SanitizerCoverage pass, which guides libFuzzer), so
# no nightly toolchain is needed; the sanitizers, which need nightly's
# prebuilt runtimes, are left out. -O optimises; -a keeps overflow checks
# and debug assertions on, as in a debug build. Line tables only for debug
# info: full debug info of every target takes gigabytes of disk.
#
# cargo-fuzz is installed under .run/cargo-fuzz if it is not on PATH. A
# crash or a failed check stops the script with status 1 and leaves the
# input in fuzz/artifacts/<target>/; replay it with
#   cargo fuzz run --sanitizer none -O -a <target> <file>
# (in fuzz/), then pin it in a unit test before fixing the reader.
set -euo pipefail
total=${1:?usage: scripts/fuzz.sh SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
targets=${FUZZ_TARGETS:-decode_request server_requests read_log log_records read_snapshot}

if ! cargo fuzz --version >/dev/null 2>&1; then
  if [ ! -x "$root/.run/cargo-fuzz/bin/cargo-fuzz" ]; then
    echo "fuzz.sh: installing cargo-fuzz into .run/cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 --root "$root/.run/cargo-fuzz"
  fi
  export PATH="$root/.run/cargo-fuzz/bin:$PATH"
fi

export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cd "$root/fuzz"
set -- $targets
per=$(( total / $# ))
[ "$per" -ge 1 ] || per=1
echo "fuzz.sh: building $# targets" >&2
cargo fuzz build --sanitizer none -O -a
for t in $targets; do
  echo "fuzz.sh: $t for ${per}s" >&2
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a reader
  # that allocates what the input cannot justify is a finding.
  if ! cargo fuzz run --sanitizer none -O -a "$t" -- \
      -max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$root/fuzz/$t.log"; then
    tail -40 "$root/fuzz/$t.log" >&2
    echo "fuzz.sh: $t found a problem; its input is in fuzz/artifacts/$t/ (log: fuzz/$t.log)" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units' "$root/fuzz/$t.log" | tail -1 >&2 || true
done
echo "fuzz.sh: no findings" >&2
