# mailmesh — flat Makefile.  `make` builds build/mailmesh; `make test` runs every test;
# `make test SANITIZE=1` does the same under ASan+UBSan (in build/san); `V=1` shows
# full command lines.  Sources are picked up by directory, so adding a file needs no edit:
#   crdt/*.c proto/*.c      -> build/libmm.a       (pure code: no I/O, no clock)
#   node/*.c (but main.c)   -> build/libmmnode.a   (libuv, files, LMDB)
#   node/main.c             -> build/mailmesh
#   sim/*.c                 -> build/mailmesh-sim
#   tests/test_*.c          -> build/tests/test_*  (cmocka unit tests)
#   tests/tool_*.c          -> build/tests/*       (helpers the test scripts run)
#   fuzz/fuzz_*.c           -> build/fuzz/fuzz_*   (`make fuzz`, clang libFuzzer)

CC       ?= cc
PREFIX   ?= /usr/local
DESTDIR  ?=
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SANITIZE ?= 0
PKGS     ?= libsodium msgpack libuv lmdb inih
OPT      ?= -O2 -g
ifeq ($(SANITIZE),1)
BUILD    ?= build/san
SANFLAGS ?= -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD    ?= build
SANFLAGS ?=
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) cmocka 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

CFLAGS   ?= $(OPT)
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I. $(PKG_CFLAGS) $(SANFLAGS) $(CFLAGS) -MMD -MP
ALL_LDFLAGS := $(SANFLAGS) $(LDFLAGS)

ifeq ($(V),1)
Q :=
else
Q := @
endif

CORE_SRC := $(sort $(wildcard crdt/*.c proto/*.c))
NODE_SRC := $(sort $(filter-out node/main.c,$(wildcard node/*.c)))
SIM_SRC  := $(sort $(wildcard sim/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TOOL_SRC := $(sort $(wildcard tests/tool_*.c))
FUZZ_SRC := $(sort $(wildcard fuzz/fuzz_*.c))

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
NODE_OBJ := $(NODE_SRC:%.c=$(BUILD)/obj/%.o)
SIM_OBJ  := $(SIM_SRC:%.c=$(BUILD)/obj/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TOOLS    := $(TOOL_SRC:tests/tool_%.c=$(BUILD)/tests/%)
FUZZERS  := $(FUZZ_SRC:fuzz/%.c=build/fuzz/%)

BIN := $(BUILD)/mailmesh
SIM := $(if $(SIM_SRC),$(BUILD)/mailmesh-sim)

.PHONY: all deps test test-programs demo bench fuzz fuzz-run install clean check-deps
# Keep objects of test programs between runs (make would delete them as intermediates).
.SECONDARY:
all: $(BIN) $(SIM)

deps:
	$(Q)sh scripts/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/libmm.a: $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libmmnode.a: $(NODE_OBJ)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(BUILD)/obj/node/main.o $(BUILD)/libmmnode.a $(BUILD)/libmm.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/mailmesh-sim: $(SIM_OBJ) $(BUILD)/libmm.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(BUILD)/libmmnode.a $(BUILD)/libmm.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS) $(CMOCKA_LIBS) -lm

# test_wipe looks into every block our code frees or moves (tests/test_wipe.c): its free()
# and realloc() go through __wrap_free and __wrap_realloc first.
$(BUILD)/tests/test_wipe: ALL_LDFLAGS += -Wl,--wrap=free -Wl,--wrap=realloc

# Tools used by test scripts: tests/tool_foo.c -> build/tests/foo
$(BUILD)/tests/%: $(BUILD)/obj/tests/tool_%.o $(BUILD)/libmmnode.a $(BUILD)/libmm.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

# The whole suite: unit tests, then the integration scripts (tests/it_*.sh, *.py).
# tests/run.sh prints one line per test and the closing `N passed, N failed`.
test: check-deps all $(TESTS) $(TOOLS)
	$(Q)BUILD=$(BUILD) SANITIZE=$(SANITIZE) sh tests/run.sh $(TESTS)

# What `make test` runs, built only (CI builds it with -j first: `make test` runs the
# programs one after the other, and would build them so too)
test-programs: all $(TESTS) $(TOOLS)

check-deps:
	$(Q)sh scripts/deps.sh

demo: check-deps all
	$(Q)BUILD=$(BUILD) sh scripts/demo.sh

bench: check-deps all
	$(Q)BUILD=$(BUILD) sh bench/run.sh

# libFuzzer targets: clang, ASan+UBSan, linked with the pure code only, plus node/'s
# plain-POSIX Maildir code for fuzz_maildir (nothing of libuv or LMDB).  The shared
# code is compiled once (instrumented, not linked with libFuzzer's main) and each
# target links it: CI builds all eight.
FUZZ_CC ?= clang
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -I. $(shell pkg-config --cflags libsodium msgpack) -MMD -MP
FUZZ_FLAGS := $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined
FUZZ_NODE_SRC := node/maildir.c
FUZZ_OBJ := $(CORE_SRC:%.c=build/fuzz/obj/%.o) $(FUZZ_NODE_SRC:%.c=build/fuzz/obj/%.o)
fuzz: $(FUZZERS)
build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $@")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<
build/fuzz/%: fuzz/%.c $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_OBJ) $(shell pkg-config --libs libsodium msgpack)

# Short fuzz runs on the kept seed corpora (CI): FUZZ_SECONDS each.
FUZZ_SECONDS ?= 20
fuzz-run: fuzz
	$(Q)sh scripts/fuzz-run.sh $(FUZZ_SECONDS) $(FUZZERS)

# the binary, the docs and example files, and a systemd unit naming this PREFIX
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/doc/mailmesh/examples \
	    $(DESTDIR)$(SYSTEMDUNITDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/mailmesh
	install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/mailmesh/
	install -m 0644 etc/mailmesh.conf.example etc/peers.example $(DESTDIR)$(PREFIX)/share/doc/mailmesh/examples/
	sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@DOCDIR@|$(PREFIX)/share/doc/mailmesh|g' \
	    etc/mailmesh.service > $(DESTDIR)$(SYSTEMDUNITDIR)/mailmesh.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/mailmesh.service

clean:
	rm -rf build

# header dependencies of the objects of this BUILD (which may lie outside build/)
-include $(shell find $(BUILD) build/fuzz -name '*.d' 2>/dev/null)
