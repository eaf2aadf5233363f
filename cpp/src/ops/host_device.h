#pragma once
// KILN_HD marks the functions that both backends call: the CPU kernels, and the CUDA kernels
// compiled by nvcc (ops/math.h's functors, cpu/random.h's generator).
#ifdef __CUDACC__
#define KILN_HD __host__ __device__
#else
#define KILN_HD
#endif
