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

template <>
struct Context<cpu> {
    int threads = default_threads();

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
