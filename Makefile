# tide - a Lua-scriptable event router.
#
#   make            build build/tide, build/libtide.a and the Lua modules
#   make run        install missing packages, build, run tide on an example
#   make test       install missing packages, run the whole suite (plain and
#                   under ASan+UBSan); ends with "N passed, N failed"
#   make asan       the suite under AddressSanitizer + UBSan only
#   make bench      side-by-side benchmark against nats-server (core, scripts,
#                   HTTP, TLS, auth, durable streams against JetStream,
#                   subscription scale), the web console's cost, and handlers
#                   in cluster mode with 1, 2 and 3 nodes
#   make soak       long runs: reload under load, stream crash rounds, fuzzers
#   make fuzz       run the protocol parser fuzzer (FUZZ_SECONDS, default 600)
#   make deps       install missing Debian packages

CC      ?= cc
BUILD   ?= build
CSTD     = -std=c11 -D_GNU_SOURCE
WARN     = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
OPT     ?= -O2 -g
SAN     ?=
PKGS     = libevent_core libevent_extra libevent_openssl libevent_pthreads openssl lua5.4 libcjson libcrypto libnats
CFLAGS  += $(CSTD) $(WARN) $(OPT) $(SAN) $(INCS) -fPIC $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lreadline -lcrypt -lm
LDFLAGS += $(SAN)

# src/ has one folder per layer (docs/architecture.md): base, core, store,
# script, app.  Each may call only the layers before it in that list;
# scripts/layer-check.sh reads the built objects and enforces it.
LAYERS   = base core store script app
INCS     = $(LAYERS:%=-Isrc/%)
CORE_SRC = $(filter-out src/app/main.c src/app/luamod.c, $(foreach l,$(LAYERS),$(wildcard src/$(l)/*.c)))
CORE_OBJ = $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o)
HDRS     = $(foreach l,$(LAYERS),$(wildcard src/$(l)/*.h))

# The web console (console/: TypeScript + Vite), built and embedded into
# the tide binary as a generated C file when its sources change.
CONSOLE_SRC = console/index.html console/package-lock.json console/tsconfig.json console/vite.config.ts \
              $(wildcard console/src/*) scripts/console-build.sh scripts/embed-assets.lua
CONSOLE_GEN = $(BUILD)/gen/console_assets.c
CONSOLE_OBJ = $(BUILD)/obj/gen/console_assets.o

TIDE     = $(BUILD)/tide
LIBTIDE  = $(BUILD)/libtide.a
LUAMOD   = $(BUILD)/tide_core.so
PROCMOD  = $(BUILD)/procmod.so
INTEROP  = $(BUILD)/interop_c
BENCHBIN = $(BUILD)/nats_bench
JSBENCH  = $(BUILD)/js_bench
FSPROBE  = $(BUILD)/fsync_probe

.PHONY: all deps run test asan check bench soak fuzz fuzz-replay clean

all: $(TIDE) $(LIBTIDE) $(LUAMOD) $(PROCMOD)

deps:
	@scripts/install-deps.sh

$(BUILD)/obj/%.o: src/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBTIDE): $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CONSOLE_GEN): $(CONSOLE_SRC)
	scripts/console-build.sh $(BUILD)/console $@

$(CONSOLE_OBJ): $(CONSOLE_GEN) src/app/console_assets.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(TIDE): $(BUILD)/obj/app/main.o $(CONSOLE_OBJ) $(LIBTIDE)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(LUAMOD): $(BUILD)/obj/app/luamod.o $(LIBTIDE)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(LDLIBS)

$(PROCMOD): tests/support/procmod.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -shared -o $@ $< $(LDFLAGS)

$(INTEROP): tests/interop/interop_c.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lnats

$(BUILD)/auth_c: tests/interop/auth_c.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lnats

$(BUILD)/tls_c: tests/interop/tls_c.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lnats

$(BUILD)/interop_js_c: tests/interop/js_c.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lnats -lpthread

$(BUILD)/interop_jscons_c: tests/interop/jscons_c.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lnats

$(BENCHBIN): bench/nats_bench.c bench/bench_util.c bench/bench_util.h
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) -O2 -g -Wall -Wextra -o $@ bench/nats_bench.c bench/bench_util.c -lnats -lpthread -lm

$(FSPROBE): bench/fsync_probe.c
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) -O2 -g -Wall -Wextra -o $@ $<

$(JSBENCH): bench/js_bench.c bench/bench_util.c bench/bench_util.h
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) -O2 -g -Wall -Wextra -o $@ bench/js_bench.c bench/bench_util.c -lnats -lpthread -lm

run: deps all
	$(TIDE) serve -c examples/tour/tide.lua

# The whole suite: the specs against the plain build and under ASan + UBSan,
# side by side (scripts/run-tests.sh; TEST_JOBS busted processes at a time).
test: deps
	@scripts/run-tests.sh

asan: deps
	@scripts/run-tests.sh --asan-only

check: all
	@scripts/run-tests.sh --plain-only

bench: deps all $(BENCHBIN) $(JSBENCH) $(FSPROBE) $(PROCMOD)
	@scripts/bench.sh
	@scripts/bench-scripts.sh
	@scripts/bench-http.sh
	@scripts/bench-tls.sh
	@scripts/bench-auth.sh
	@scripts/bench-js.sh
	@scripts/bench-scale.sh
	@scripts/bench-console.sh
	@scripts/bench-cluster.sh

# Longer than the suite: reload under load at 100,000 events, 200 kill -9
# rounds of the stream crash test, the attack specs, every fuzz target
# (parser, JSON, admin requests, HTTP).
soak: deps
	@scripts/soak.sh

fuzz: deps
	@scripts/fuzz.sh run $${FUZZ_SECONDS:-600}

fuzz-replay: deps
	@scripts/fuzz.sh replay

clean:
	rm -rf build build-asan build-fuzz
