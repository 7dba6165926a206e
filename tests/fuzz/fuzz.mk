# tests/fuzz/fuzz.mk: libFuzzer targets for every parser of user files (included by the Makefile).
#   make fuzz                          builds build/fuzz/fuzz_<target> with clang (ASan + UBSan +
#                                      libFuzzer) and runs each for FUZZ_SECONDS (default 60), one
#                                      after another on one core; a summary table at the end, a
#                                      non-zero exit with the reproducer's path on any finding
#   make fuzz FUZZ_TARGETS=gguf        one target (or a list)
#   make fuzz-build                    builds only
# Library objects for the fuzzers are compiled by clang into build/fuzz/obj (never mixed with the
# gcc objects). `make test` builds $(BUILD)/fuzz/replay_<target>: the same targets with gcc and
# tests/fuzz/replay.c as main(), which tests/test_fuzz_replay.sh runs over the seeds in
# tests/fuzz/corpus/<target> and the fixed crashes in tests/fuzz/regress/<target>.
# Seeds are (re)made by tests/fuzz/make_seeds.py; dictionaries are tests/fuzz/dict/<target>.dict.

FUZZ_ALL     := safetensors st_index gguf hf_config tokenizer_json adapter_config yaml_config qat_config jsonl idx ckpt
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_DIR     := build/fuzz
FUZZ_OBJ     := $(FUZZ_DIR)/obj
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
# OpenMP as in the real build (the code is the same; tests/fuzz/run.sh pins OMP_NUM_THREADS=1)
FUZZ_CFLAGS  := $(CSTD) $(WARN) -O1 -g -fno-omit-frame-pointer -I. $(PKG_CFLAGS) -MMD -MP -pthread -fopenmp \
                $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_LDLIBS  := $(PKG_LIBS) $(BLAS_RPATH) -lm -pthread -fopenmp

# What the parsers need: everything below models/, and the config and checkpoint code of train/.
FUZZ_LIB_SRC := $(filter-out %/main.c,$(wildcard core/*.c quant/*.c autograd/*.c autograd/ops/*.c io/*.c lora/*.c \
                datasets/*.c)) train/config.c train/qat_config.c train/yaml_tree.c train/yaml_schema.c train/train_ckpt.c
FUZZ_LIB     := $(FUZZ_DIR)/libloquat_fuzz.a
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_REPLAY_BIN := $(FUZZ_ALL:%=$(BUILD)/fuzz/replay_%)

ifneq ($(filter fuzz fuzz-build,$(MAKECMDGOALS)),)
ifeq ($(shell command -v $(FUZZ_CC) >/dev/null 2>&1 && echo 1),)
$(error make fuzz needs clang with libFuzzer (FUZZ_CC=$(FUZZ_CC) not found; apt-get install clang))
endif
endif

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BIN)

fuzz: $(FUZZ_BIN)
	@FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_TARGETS)

$(FUZZ_OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CLANG $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_SRC:%.c=$(FUZZ_OBJ)/%.o)
	@rm -f $@
	@echo "  AR  $@"
	@ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: $(FUZZ_OBJ)/tests/fuzz/fuzz_%.o $(FUZZ_LIB)
	@echo "  LD  $@"
	@$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -o $@ $^ $(FUZZ_LDLIBS)

# Replay binaries (gcc, the build's own flags and sanitizers) for the test suite.
$(BUILD)/fuzz/replay_%: $(OBJDIR)/tests/fuzz/fuzz_%.o $(OBJDIR)/tests/fuzz/replay.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test: $(FUZZ_REPLAY_BIN)
