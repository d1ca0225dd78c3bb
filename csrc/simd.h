// Function multi-versioning for the vectorisable inner loops: GCC and Clang
// compile the marked function for each listed target and pick the best one
// for the running CPU at load time, so a portable build still uses AVX2 /
// AVX-512 where present. (The vectoriser also needs -fno-trapping-math, set
// in CMakeLists.txt, to if-convert the GELU's comparisons.)
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_ADDRESS__)
#define SEPFL_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEPFL_VECTOR_CLONES
#endif
