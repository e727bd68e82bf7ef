#!/bin/bash
# The protocol parser fuzzer (libFuzzer, clang, ASan + UBSan).
#
#   scripts/fuzz.sh replay        run every input of tests/fuzz/corpus once
#   scripts/fuzz.sh run SECONDS   fuzz for SECONDS, growing a corpus in
#                                 build-fuzz/corpus (seeded from tests/fuzz/corpus);
#                                 crashes land in build-fuzz/
set -eu
cd "$(dirname "$0")/.."
OUT=build-fuzz
BIN=$OUT/fuzz_parser
mkdir -p "$OUT"
SRCS="tests/fuzz/fuzz_parser.c src/util.c src/proto.c src/subject.c src/sublist.c src/dict.c src/log.c"
need=0
[ -x "$BIN" ] || need=1
for f in $SRCS src/*.h; do [ "$f" -nt "$BIN" ] && need=1; done
if [ $need = 1 ]; then
    clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -o "$BIN" $SRCS
fi
case "${1:-replay}" in
replay)
    exec "$BIN" -runs=0 tests/fuzz/corpus
    ;;
run)
    secs=${2:-600}
    mkdir -p "$OUT/corpus"
    exec "$BIN" -max_total_time="$secs" -max_len=8192 -artifact_prefix="$OUT/" \
        -dict=tests/fuzz/nats.dict "$OUT/corpus" tests/fuzz/corpus
    ;;
*)
    echo "usage: $0 replay | run SECONDS" >&2
    exit 2
    ;;
esac
