#!/bin/bash
# The protocol parser fuzzer (libFuzzer, clang, ASan + UBSan).
#
#   scripts/fuzz.sh replay             run every stored input once (every target)
#   scripts/fuzz.sh run SECONDS        fuzz the protocol parser for SECONDS, growing
#                                      a corpus in build-fuzz/corpus (seeded from
#                                      tests/fuzz/corpus); crashes land in build-fuzz/
#   scripts/fuzz.sh run-json SECONDS   the same for the JSON layer (tests/fuzz/json-corpus)
#   scripts/fuzz.sh run-admin SECONDS  the same for the admin requests the store answers
#                                      (tests/fuzz/admin-corpus)
#   scripts/fuzz.sh run-nkey SECONDS   the same for the nkey codec (tests/fuzz/nkey-corpus)
#   scripts/fuzz.sh run-http SECONDS   the same for what an HTTP client sends on one
#                                      connection (tests/fuzz/http-corpus, http.dict)
set -eu
cd "$(dirname "$0")/.."
OUT=build-fuzz
BIN=$OUT/fuzz_parser
mkdir -p "$OUT"
SRCS="tests/fuzz/fuzz_parser.c src/base/util.c src/core/proto.c src/core/subject.c src/core/sublist.c src/base/dict.c src/base/log.c"
need=0
[ -x "$BIN" ] || need=1
for f in $SRCS src/*/*.h; do [ "$f" -nt "$BIN" ] && need=1; done
if [ $need = 1 ]; then
    clang -std=c11 -D_GNU_SOURCE -Isrc/base -Isrc/core -Isrc/store -Isrc/script -Isrc/app -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -o "$BIN" $SRCS
fi
JBIN=$OUT/fuzz_json
JSRCS="tests/fuzz/fuzz_json.c src/base/json.c src/base/json_tree.c src/script/json_lua.c src/script/json_edit.c"
jneed=0
[ -x "$JBIN" ] || jneed=1
for f in $JSRCS src/*/*.h; do [ "$f" -nt "$JBIN" ] && jneed=1; done
if [ $jneed = 1 ]; then
    clang -std=c11 -D_GNU_SOURCE -Isrc/base -Isrc/core -Isrc/store -Isrc/script -Isrc/app -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined $(pkg-config --cflags lua5.4 libcjson) -o "$JBIN" $JSRCS \
        $(pkg-config --libs lua5.4 libcjson) -lm
fi
ABIN=$OUT/fuzz_admin
ASRCS="tests/fuzz/fuzz_admin.c $(ls src/base/*.c src/core/*.c src/store/*.c)"
aneed=0
[ -x "$ABIN" ] || aneed=1
for f in $ASRCS src/*/*.h; do [ "$f" -nt "$ABIN" ] && aneed=1; done
if [ $aneed = 1 ]; then
    clang -std=c11 -D_GNU_SOURCE -Isrc/base -Isrc/core -Isrc/store -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined $(pkg-config --cflags libevent_core libevent_openssl openssl libcjson libcrypto) -o "$ABIN" $ASRCS \
        $(pkg-config --libs libevent_core libevent_openssl openssl libcjson libcrypto) -lcrypt -lm -lpthread
fi
NBIN=$OUT/fuzz_nkey
NSRCS="tests/fuzz/fuzz_nkey.c src/base/nkey.c"
nneed=0
[ -x "$NBIN" ] || nneed=1
for f in $NSRCS src/base/nkey.h; do [ "$f" -nt "$NBIN" ] && nneed=1; done
if [ $nneed = 1 ]; then
    clang -std=c11 -D_GNU_SOURCE -Isrc/base -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined $(pkg-config --cflags libcrypto) -o "$NBIN" $NSRCS \
        $(pkg-config --libs libcrypto)
fi
HBIN=$OUT/fuzz_http
HSRCS="tests/fuzz/fuzz_http.c $(ls src/base/*.c src/core/*.c src/store/*.c src/script/*.c src/app/*.c |
    grep -v -e src/app/main.c -e src/app/luamod.c)"
hneed=0
[ -x "$HBIN" ] || hneed=1
for f in $HSRCS src/*/*.h; do [ "$f" -nt "$HBIN" ] && hneed=1; done
if [ $hneed = 1 ]; then
    clang -std=c11 -D_GNU_SOURCE -Isrc/base -Isrc/core -Isrc/store -Isrc/script -Isrc/app -g -O1 \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        $(pkg-config --cflags libevent_core libevent_extra libevent_openssl libevent_pthreads openssl lua5.4 libcjson libcrypto libnats) -o "$HBIN" $HSRCS \
        $(pkg-config --libs libevent_core libevent_extra libevent_openssl libevent_pthreads openssl lua5.4 libcjson libcrypto libnats) -lreadline -lcrypt -lm -lpthread
fi
case "${1:-replay}" in
replay)
    "$BIN" -runs=0 tests/fuzz/corpus && "$JBIN" -runs=0 tests/fuzz/json-corpus &&
        "$ABIN" -runs=0 tests/fuzz/admin-corpus && "$NBIN" -runs=0 tests/fuzz/nkey-corpus &&
        exec "$HBIN" -runs=0 tests/fuzz/http-corpus
    ;;
run-nkey)
    secs=${2:-600}
    mkdir -p "$OUT/nkey-corpus"
    exec "$NBIN" -max_total_time="$secs" -max_len=256 -artifact_prefix="$OUT/nkey-" \
        "$OUT/nkey-corpus" tests/fuzz/nkey-corpus
    ;;
run-http)
    secs=${2:-600}
    mkdir -p "$OUT/http-corpus"
    exec "$HBIN" -max_total_time="$secs" -max_len=20000 -artifact_prefix="$OUT/http-" \
        -dict=tests/fuzz/http.dict "$OUT/http-corpus" tests/fuzz/http-corpus
    ;;
run-admin)
    secs=${2:-600}
    mkdir -p "$OUT/admin-corpus"
    exec "$ABIN" -max_total_time="$secs" -max_len=4096 -artifact_prefix="$OUT/admin-" \
        "$OUT/admin-corpus" tests/fuzz/admin-corpus
    ;;
run-json)
    secs=${2:-600}
    mkdir -p "$OUT/json-corpus"
    exec "$JBIN" -max_total_time="$secs" -max_len=4096 -artifact_prefix="$OUT/json-" \
        "$OUT/json-corpus" tests/fuzz/json-corpus
    ;;
run)
    secs=${2:-600}
    mkdir -p "$OUT/corpus"
    exec "$BIN" -max_total_time="$secs" -max_len=8192 -artifact_prefix="$OUT/" \
        -dict=tests/fuzz/nats.dict "$OUT/corpus" tests/fuzz/corpus
    ;;
*)
    echo "usage: $0 replay | run SECONDS | run-json SECONDS | run-admin SECONDS | run-nkey SECONDS | run-http SECONDS" >&2
    exit 2
    ;;
esac
