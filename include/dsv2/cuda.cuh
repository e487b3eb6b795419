// dsv2 with the CUDA backend. Include this (instead of dsv2/dsv2.hpp) from a
// .cu file compiled by nvcc: it brings the CUDA primitives, then the CPU
// backend and every component, so both Model<T, cpu> and Model<T, cuda> are
// available in one translation unit.
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

// fmt 9 turns constexpr off under nvcc and then fails its own consteval
// format-string checks; keeping constexpr on makes both work.
#if !defined(FMT_USE_CONSTEXPR)
#define FMT_USE_CONSTEXPR 1
#endif

// nvcc-only diagnostics on code that g++ compiles cleanly: Eigen's defaulted
// __host__ __device__ members (20012), a constrained conversion operator
// (554), `module` used as an identifier (3189), and variables used only in
// `#pragma omp ... if(...)` clauses, which nvcc's front end does not see (177).
#pragma nv_diag_suppress 20012
#pragma nv_diag_suppress 554
#pragma nv_diag_suppress 3189
#pragma nv_diag_suppress 177

#include "dsv2/backend/cuda/attention.cuh"
#include "dsv2/backend/cuda/context.cuh"
#include "dsv2/backend/cuda/elementwise.cuh"
#include "dsv2/backend/cuda/linear.cuh"
#include "dsv2/backend/cuda/mla_decode.cuh"
#include "dsv2/backend/cuda/moe.cuh"
#include "dsv2/backend/cuda/rotary.cuh"

#include "dsv2/dsv2.hpp"

namespace dsv2 {
static_assert(Backend<cuda>, "the CUDA backend must satisfy the Backend concept (docs/backends.md)");
}
