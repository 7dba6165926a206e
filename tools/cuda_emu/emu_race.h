/* tools/cuda_emu/emu_race.h: the order check (emu_race.cpp), for the emulator's runtime and its
 * device memory calls. */
#ifndef LQ_CUDA_EMU_RACE_H
#define LQ_CUDA_EMU_RACE_H

#include <cstddef>

/* LQ_CUDA_EMU_RACE=1 (read once): every launch runs twice, in opposite block and thread orders,
 * and device memory that differs between the two is reported. */
bool lq_emu_race_on(void);
/* The mode set from the program (the emulator's self-test; device memory allocated before keeps its
 * kind, and is not checked). */
void lq_emu_race_force(bool on);
/* Device memory in this mode: whole pages, registered (NULL when none is left); free: false when p
 * is not such memory. */
void *lq_emu_race_alloc(size_t bytes);
bool lq_emu_race_free(void *p);
/* Around a launch: begin, the first run, between, the second run, end (compares and reports). */
void lq_emu_race_begin(void);
void lq_emu_race_between(void);
void lq_emu_race_end(const char *name);
/* Around each block of the first run: two blocks that change one byte (not by an atomic) race. */
void lq_emu_race_block_begin(long long block);
void lq_emu_race_block_end(const char *name);

#endif
