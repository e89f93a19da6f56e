/*
 * LD_PRELOAD shim for tests/bench/alloc-trace.ts: records every allocation of 64 KiB or more
 * (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign; onnxruntime's CPU allocator
 * uses aligned operator new, which ends in aligned_alloc) and the frees of such blocks, with a
 * CLOCK_MONOTONIC time in ns (the clock of Node's process.hrtime), into memory; writes them to
 * $ALLOC_TRACE_OUT at exit as "time op pointer bytes" lines (op 0 = free). Not part of hollowc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_BYTES (64 * 1024)
#define MAX_RECORDS (8 * 1024 * 1024)

typedef struct { uint64_t t; void *p; size_t n; int op; } record;
static record *records;
static volatile long count;
static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
/* dlsym itself allocates: serve it from a static buffer before the real functions are known. */
static char early[1 << 16];
static size_t early_used;

static void *early_alloc(size_t n) {
  void *p = early + early_used;
  early_used += (n + 15) & ~(size_t)15;
  return p;
}

static void resolve(void) {
  if (real_malloc) return;
  real_calloc = dlsym(RTLD_NEXT, "calloc");
  real_malloc = dlsym(RTLD_NEXT, "malloc");
  real_free = dlsym(RTLD_NEXT, "free");
  real_realloc = dlsym(RTLD_NEXT, "realloc");
  real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
  real_memalign = dlsym(RTLD_NEXT, "memalign");
}

static void note(int op, void *p, size_t n) {
  if (!records) return;
  long i = __sync_fetch_and_add(&count, 1);
  if (i >= MAX_RECORDS) return;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  records[i] = (record){(uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, p, n, op};
}

static int early_block(void *p) { return (char *)p >= early && (char *)p < early + sizeof early; }

void *malloc(size_t n) {
  if (!real_malloc) { resolve(); if (!real_malloc) return early_alloc(n); }
  void *p = real_malloc(n);
  if (n >= MIN_BYTES) note(1, p, n);
  return p;
}
void *calloc(size_t a, size_t b) {
  if (!real_calloc) { void *p = early_alloc(a * b); memset(p, 0, a * b); return p; }
  void *p = real_calloc(a, b);
  if (a * b >= MIN_BYTES) note(1, p, a * b);
  return p;
}
void free(void *p) {
  if (!p || early_block(p)) return;
  resolve();
  if (malloc_usable_size(p) >= MIN_BYTES) note(0, p, 0);
  real_free(p);
}
void *realloc(void *q, size_t n) {
  resolve();
  if (q && !early_block(q) && malloc_usable_size(q) >= MIN_BYTES) note(0, q, 0);
  void *p = real_realloc(q, n);
  if (n >= MIN_BYTES) note(1, p, n);
  return p;
}
int posix_memalign(void **pp, size_t a, size_t n) {
  resolve();
  int r = real_posix_memalign(pp, a, n);
  if (!r && n >= MIN_BYTES) note(1, *pp, n);
  return r;
}
void *aligned_alloc(size_t a, size_t n) {
  resolve();
  void *p = real_aligned_alloc(a, n);
  if (n >= MIN_BYTES) note(1, p, n);
  return p;
}
void *memalign(size_t a, size_t n) {
  resolve();
  void *p = real_memalign(a, n);
  if (n >= MIN_BYTES) note(1, p, n);
  return p;
}

__attribute__((constructor)) static void start(void) {
  resolve();
  records = real_calloc(MAX_RECORDS, sizeof(record));
}

__attribute__((destructor)) static void finish(void) {
  const char *path = getenv("ALLOC_TRACE_OUT");
  if (!path || !records) return;
  record *r = records;
  records = NULL;
  FILE *f = fopen(path, "w");
  if (!f) return;
  long n = count < MAX_RECORDS ? count : MAX_RECORDS;
  for (long i = 0; i < n; i++) fprintf(f, "%llu %d %p %zu\n", (unsigned long long)r[i].t, r[i].op, r[i].p, r[i].n);
  fclose(f);
}
