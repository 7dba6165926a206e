# loquat build. `make` (CPU), `make CUDA=1`, `make test`, `make SANITIZE=1 test`, `make DEBUG=1`,
# `make deps`, `make demo`. Objects go under build/ (build/<variant>/ for sanitizer and debug builds).

CC      ?= cc
NVCC    ?= nvcc
PKGS    := openblas cmocka libcjson libpcre2-8 zlib hdf5 yaml-0.1
# OpenBLAS built on OpenMP shares one thread pool with loquat's own OpenMP loops. The pthread
# build's threads and OpenMP's spinning workers fight over the cores (measured 2-5x slower
# quantized matmuls on 2 cores), so the OpenMP build is preferred where it is installed;
# BLAS=pthread forces the other.
BLAS    ?= openmp
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)
BLAS_OMP_PC := /usr/lib/$(MULTIARCH)/openblas-openmp/pkgconfig
ifeq ($(BLAS),openmp)
ifneq ($(wildcard $(BLAS_OMP_PC)/openblas.pc),)
export PKG_CONFIG_PATH := $(BLAS_OMP_PC)$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH))
BLAS_RPATH := -Wl,-rpath,$(shell PKG_CONFIG_PATH=$(BLAS_OMP_PC) pkg-config --variable=libdir openblas)
else
override BLAS := pthread
endif
endif
CSTD    := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
WARN    := -Wall -Wextra -Wshadow -Wno-unused-parameter
ifeq ($(CI),true)
WARN    += -Werror
endif

ifeq ($(SANITIZE),1)
VARIANT := san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDSAN   := -fsanitize=address,undefined
else ifeq ($(DEBUG),1)
VARIANT := debug
OPT     := -O0 -g3
else
VARIANT := release
OPT     := -O2 -g -march=x86-64-v2 -mtune=generic
endif

# Optional features, detected and reported; force with CUDA=0/1 and OPENMP=0/1.
HAVE_NVCC := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1 || echo 0)
CUDA    ?= 0
ifeq ($(CUDA),1)
ifeq ($(HAVE_NVCC),0)
$(warning CUDA=1 asked for, but $(NVCC) is not on PATH: building without CUDA)
override CUDA := 0
endif
endif
OPENMP  ?= 1
# EMU=1: the CUDA build's code on the CPU emulator (tools/cuda_emu/) instead of a GPU: each .cu goes
# through tools/cuda_emu/cu2cpp.py and the host C++ compiler, and the emulator's runtime replaces
# cudart and cuBLAS. It checks kernel logic only (never timing, races or the real hardware).
EMU     ?= 0
ifeq ($(EMU),1)
override CUDA := 0
endif

# Missing build dependencies are installed before anything else is worked out.
ifeq ($(filter deps clean,$(MAKECMDGOALS)),)
ifneq ($(shell pkg-config --exists $(PKGS) 2>/dev/null && echo 1),1)
$(info loquat: build dependencies missing, running tools/deps.sh)
DEPS_RC := $(shell tools/deps.sh >&2; echo $$?)
ifneq ($(DEPS_RC),0)
$(error tools/deps.sh failed (status $(DEPS_RC)); run it by hand to see why)
endif
endif
endif
PKG_CFLAGS  := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    := $(shell pkg-config --libs openblas libcjson libpcre2-8 zlib hdf5 yaml-0.1 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

# BUILD=dir on the command line puts a build elsewhere (parallel work trees).
ifeq ($(CUDA),1)
VARIANT := $(VARIANT)-cuda
endif
ifeq ($(EMU),1)
VARIANT := $(VARIANT)-emu
endif
ifeq ($(VARIANT),release)
BUILD   ?= build
else
BUILD   ?= build/$(VARIANT)
endif
OBJDIR  := $(BUILD)/obj

CFLAGS  += $(CSTD) $(WARN) $(OPT) -I. $(PKG_CFLAGS) -MMD -MP
LDLIBS  := $(PKG_LIBS) $(BLAS_RPATH) -lm -pthread
CFLAGS  += -pthread
ifeq ($(CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
NVFLAGS := -O2 -std=c++17 -I. -MMD -MP -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
           -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall
CFLAGS  += -DLQ_HAVE_CUDA=1 -I$(CUDA_HOME)/include
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif
ifeq ($(EMU),1)
# the CUDA headers only (cuda_runtime.h, cuda_bf16.h, cublas_v2.h work in host C++); the emulator's
# include/ comes first for its own <mma.h>. -ffp-contract=off: __fmul_rn then __fadd_rn stay two
# roundings, as on the GPU.
CUDA_HOME ?= $(if $(filter 1,$(HAVE_NVCC)),$(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC)))),/usr/local/cuda)
EMU_DIR := tools/cuda_emu
EMU_CXXFLAGS := -std=c++17 -O1 -g -ffp-contract=off -pthread -I. -I$(EMU_DIR)/include -I$(EMU_DIR) \
                -isystem $(CUDA_HOME)/include -DLQ_HAVE_CUDA=1 -MMD -MP -Wall -Wno-unused-function -Wno-unknown-pragmas
CFLAGS  += -DLQ_HAVE_CUDA=1 -DLQ_CUDA_EMU=1 -isystem $(CUDA_HOME)/include
LDLIBS  += -lstdc++
ifeq ($(SANITIZE),1)
# kernels under ASan: device buffers are heap blocks here, so a read past one is reported
EMU_CXXFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
endif
ifeq ($(OPENMP),1)
CFLAGS  += -fopenmp
LDFLAGS += -fopenmp
endif
LDFLAGS += $(LDSAN)

LIB_SRC := $(wildcard core/*.c quant/*.c autograd/*.c autograd/ops/*.c io/*.c lora/*.c models/*.c datasets/*.c train/*.c)
LIB_SRC := $(filter-out train/main.c,$(LIB_SRC))
CU_SRC  :=
ifeq ($(CUDA),1)
# CUDA sources sit beside the C files they mirror; *_none.c are the CPU-only builds' versions.
CU_SRC  := $(wildcard core/*.cu quant/*.cu autograd/*.cu autograd/ops/*.cu train/*.cu)
LIB_SRC := $(filter-out $(CU_SRC:%.cu=%_none.c),$(LIB_SRC))
endif
EMU_OBJ :=
ifeq ($(EMU),1)
CU_SRC  := $(wildcard core/*.cu quant/*.cu autograd/*.cu autograd/ops/*.cu train/*.cu)
LIB_SRC := $(filter-out $(CU_SRC:%.cu=%_none.c),$(LIB_SRC))
EMU_OBJ := $(OBJDIR)/$(EMU_DIR)/emu_runtime.o $(OBJDIR)/$(EMU_DIR)/emu_api.o $(OBJDIR)/$(EMU_DIR)/emu_race.o
endif
LIB_OBJ := $(LIB_SRC:%.c=$(OBJDIR)/%.o) $(CU_SRC:%.cu=$(OBJDIR)/%.cu.o) $(EMU_OBJ)
CLI_OBJ := $(OBJDIR)/train/main.o
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# The GPU parity suites (tests/cuda/): built in every build, part of `make test` (without CUDA or a
# device each prints one "SKIPPED: <reason>" line), and alone in `make test-cuda` (the GPU machine).
CUDA_TEST_SRC := $(wildcard tests/cuda/test_*.c)
CUDA_TEST_BIN := $(CUDA_TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_BIN += $(CUDA_TEST_BIN)
TEST_UTIL_OBJ := $(OBJDIR)/tests/testutil.o
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

LIB     := $(BUILD)/libloquat.a
CLI     := $(BUILD)/loquat

.PHONY: all deps test test-cuda test-cuda-emu demo clean features bench
all: features $(LIB) $(CLI)

features:
	@echo "loquat build: variant=$(VARIANT) openmp=$(OPENMP) blas=openblas-$(BLAS) cuda=$(CUDA) (nvcc found: $(HAVE_NVCC)) emu=$(EMU) werror=$(if $(filter true,$(CI)),on,off)"

# Installs the Debian packages the build needs (idempotent); other targets call it when needed.
deps:
	@tools/deps.sh

$(OBJDIR)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC  $<"
	@$(CC) $(CFLAGS) -c $< -o $@

ifeq ($(EMU),1)
# a .cu as host C++: launches and extern __shared__ rewritten, the rest by lq_cuda_emu.h's macros
$(OBJDIR)/%.cu.o: %.cu $(EMU_DIR)/cu2cpp.py $(wildcard autograd/ops/*.cuh)
	@mkdir -p $(dir $@)
	@echo "  EMU $<"
	@python3 $(EMU_DIR)/cu2cpp.py $< $(OBJDIR)/$*.cu.cpp
	@$(CXX) $(EMU_CXXFLAGS) -iquote $(dir $<) -include $(EMU_DIR)/lq_cuda_emu.h -c $(OBJDIR)/$*.cu.cpp -o $@

$(OBJDIR)/$(EMU_DIR)/%.o: $(EMU_DIR)/%.cpp
	@mkdir -p $(dir $@)
	@echo "  CXX $<"
	@$(CXX) $(EMU_CXXFLAGS) -Wextra $(filter -Werror,$(WARN)) -c $< -o $@
else
$(OBJDIR)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  NVCC $<"
	@$(NVCC) $(NVFLAGS) -c $< -o $@
endif

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	@echo "  AR  $@"
	@ar rcs $@ $^

$(CLI): $(CLI_OBJ) $(LIB)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(OBJDIR)/tests/%.o $(TEST_UTIL_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS)

$(BUILD)/bench/%: $(OBJDIR)/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Benchmarks are built here and run by their scripts in bench/ (never part of make test).
bench: features $(BENCH_BIN)

test: features $(TEST_BIN) $(CLI)
	@tools/run_tests.sh $(BUILD) $(TEST_BIN)

# Only the GPU parity suites (`make CUDA=1 test-cuda` on a machine with a GPU). There a skip is a
# failure: LOQUAT_CUDA_REQUIRED=1 makes a binary that finds no CUDA say FAILED and exit 1.
test-cuda: features $(CUDA_TEST_BIN)
	@LOQUAT_CUDA_REQUIRED=1 LQ_RUN_TESTS_NO_SCRIPTS=1 tools/run_tests.sh $(BUILD) $(CUDA_TEST_BIN)

# The GPU parity suites and test_llama_random's device half on the CPU emulator (any machine; kernel
# logic only, never a GPU result): `make test-cuda-emu` builds with EMU=1 (build/release-emu).
ifeq ($(EMU),1)
EMU_SELFTEST := $(BUILD)/$(EMU_DIR)/emu_selftest
$(EMU_SELFTEST): $(OBJDIR)/$(EMU_DIR)/emu_selftest.cu.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(LDLIBS)

test-cuda-emu: features $(EMU_SELFTEST) $(CUDA_TEST_BIN) $(BUILD)/tests/test_llama_random $(CLI)
	@BUILD=$(BUILD) $(EMU_DIR)/run_emu_tests.sh $(EMU_SELFTEST) $(CUDA_TEST_BIN) $(BUILD)/tests/test_llama_random \
		tests/test_cli_cuda.sh
else
test-cuda-emu:
	@$(MAKE) --no-print-directory EMU=1 test-cuda-emu
endif

# The demo (tools/demo.sh): fetches SmolLM2-135M-Instruct (4-bit GGUF) and Jane Austen's novels
# (cached), fine-tunes with QLoRA on the CPU (configs/smollm2-austen-qlora.yaml: validation
# perplexity before and after), merges the adapter (safetensors and Q8_0 GGUF), writes a sample.
demo: all
	@tools/demo.sh $(CLI)

clean:
	rm -rf build

# libFuzzer targets (`make fuzz`) and their replay binaries for `make test`
include tests/fuzz/fuzz.mk

# keep objects between runs
.SECONDARY:

-include $(shell find build -name '*.d' 2>/dev/null)
