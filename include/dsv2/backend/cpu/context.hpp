// The CPU backend's memory and context: 64-byte aligned host memory and a
// thread count that every parallel primitive honours.
#pragma once

#include "dsv2/backend/tags.hpp"
#include "dsv2/core/tensor.hpp"

#include <algorithm>
#include <cstdlib>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dsv2 {

template <>
struct Memory<cpu> {
    static constexpr bool host_accessible = true;
    static void* allocate(std::size_t bytes) {
        return ::operator new(bytes, std::align_val_t{64});
    }
    static void release(void* p) noexcept { ::operator delete(p, std::align_val_t{64}); }
    static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
};

// How MLA decode multiplies over a bf16 latent cache on AVX-512 CPUs
// (backend/cpu/mla_decode.hpp):
//   fastest   bf16 dot products (q and the softmax weights rounded to bf16,
//             as GPU kernels do) where the CPU has AVX512_BF16 and they are
//             measured to pay, exact f32 products elsewhere;
//   exact     f32 products, exact per product, on every CPU;
//   bf16_dot  bf16 dot products wherever the CPU has them (tests, benchmarks).
enum class Bf16CacheProducts { fastest, exact, bf16_dot };

template <>
struct Context<cpu> {
    int threads = default_threads();
    Bf16CacheProducts bf16_cache_products = Bf16CacheProducts::fastest;

    Context() = default;
    explicit Context(int n_threads) : threads(n_threads > 0 ? n_threads : default_threads()) {}

    static int default_threads() {
#if defined(_OPENMP)
        return std::max(1, omp_get_max_threads());
#else
        return 1;
#endif
    }
};

// Host copies: on the CPU a "device" copy is a memcpy; the CUDA backend
// provides the same two functions, so components can move small index arrays.
template <class T>
void copy_to_device(Context<cpu>&, const T* host, T* dst, std::int64_t n) {
    if (n > 0) std::memcpy(dst, host, static_cast<std::size_t>(n) * sizeof(T));
}
template <class T>
void copy_to_host(Context<cpu>&, const T* src, T* host, std::int64_t n) {
    if (n > 0) std::memcpy(host, src, static_cast<std::size_t>(n) * sizeof(T));
}
inline void synchronize(Context<cpu>&) {}

}  // namespace dsv2
