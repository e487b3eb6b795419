// The CUDA backend's memory, context, errors and small transfers.
//
// Memory<cuda> is device memory from cudaMalloc. Context<cuda> owns a stream,
// a cuBLAS handle bound to it and a scratch buffer (CUB temporary storage,
// 16-bit copies of activations for cuBLAS); it is move-only. Every primitive
// enqueues on the context's stream; transfers to the host synchronise it.
//
// The stream is a blocking stream (cudaStreamCreate), so it is ordered with
// the legacy default stream that Memory<cuda>::zero uses (cudaMemset, no
// context at hand there): a zeroed tensor is zero before any later primitive.
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/tags.hpp"
#include "dsv2/core/tensor.hpp"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace dsv2 {
namespace cuda_detail {

[[noreturn]] inline void fail_cuda(const char* what, const char* expr, const char* file, int line) {
    detail::throw_at<CudaError>(file, line, fmt::format("[cuda] {} in `{}`", what, expr));
}

inline const char* cublas_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

}  // namespace cuda_detail
}  // namespace dsv2

// DSV2_CUDA_CHECK(expr): throw dsv2::CudaError naming the CUDA error and the expression.
#define DSV2_CUDA_CHECK(expr)                                                                        \
    do {                                                                                             \
        const cudaError_t dsv2_err_ = (expr);                                                        \
        if (dsv2_err_ != cudaSuccess) [[unlikely]]                                                   \
            ::dsv2::cuda_detail::fail_cuda(cudaGetErrorName(dsv2_err_), #expr,                       \
                                           __FILE__, __LINE__);                         \
    } while (0)

// DSV2_CUBLAS_CHECK(expr): the same for cuBLAS status codes.
#define DSV2_CUBLAS_CHECK(expr)                                                                      \
    do {                                                                                             \
        const cublasStatus_t dsv2_st_ = (expr);                                                      \
        if (dsv2_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                                          \
            ::dsv2::cuda_detail::fail_cuda(::dsv2::cuda_detail::cublas_name(dsv2_st_), #expr,        \
                                           __FILE__, __LINE__);                         \
    } while (0)

// After a kernel launch: launch-configuration errors surface here.
#define DSV2_CUDA_LAUNCHED() DSV2_CUDA_CHECK(cudaGetLastError())

namespace dsv2 {

template <>
struct Memory<cuda> {
    static constexpr bool host_accessible = false;
    static void* allocate(std::size_t bytes) {
        void* p = nullptr;
        DSV2_CUDA_CHECK(cudaMalloc(&p, bytes));
        return p;
    }
    // Destructors call this: never throws.
    static void release(void* p) noexcept { if (p) (void)cudaFree(p); }
    static void zero(void* p, std::size_t bytes) { DSV2_CUDA_CHECK(cudaMemset(p, 0, bytes)); }
};

namespace cuda_detail {

// Indices that live in device memory (cache slots, block table entries) can
// only be checked by the kernels that read them. Such a kernel skips the
// access and records it here, in mapped host memory the device writes
// directly; the next call that synchronises the stream throws (see
// Context::throw_device_errors), so a bad index is an exception, never an
// out-of-bounds write.
struct DeviceErrors {
    unsigned int kinds;     // bits of Kind
    long long value, limit;  // an offending index and the bound it broke
    enum Kind : unsigned int { cache_slot = 1u, cache_page = 2u };
};

__device__ inline void report(DeviceErrors* e, DeviceErrors::Kind kind, long long value, long long limit) {
    e->value = value;
    e->limit = limit;
    __threadfence_system();
    atomicOr(&e->kinds, static_cast<unsigned int>(kind));
}

}  // namespace cuda_detail

template <>
struct Context<cuda> {
    int device = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;

    explicit Context(int device_id = 0) : device(device_id) {
        DSV2_CUDA_CHECK(cudaSetDevice(device));
        DSV2_CUDA_CHECK(cudaStreamCreate(&stream));
        if (const cublasStatus_t s = cublasCreate(&blas); s != CUBLAS_STATUS_SUCCESS) {
            (void)cudaStreamDestroy(stream);
            cuda_detail::fail_cuda(cuda_detail::cublas_name(s), "cublasCreate(&blas)", __FILE__, __LINE__);
        }
        DSV2_CUBLAS_CHECK(cublasSetStream(blas, stream));
        // Plain f32 GEMMs stay f32 (no TF32): parity with the CPU is the contract.
        DSV2_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
        void* host = nullptr;
        DSV2_CUDA_CHECK(cudaHostAlloc(&host, sizeof(cuda_detail::DeviceErrors), cudaHostAllocMapped));
        errors_host_ = static_cast<cuda_detail::DeviceErrors*>(host);
        *errors_host_ = {};
        DSV2_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&errors_device_), host, 0));
    }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    Context(Context&& o) noexcept { swap(o); }
    Context& operator=(Context&& o) noexcept {
        if (this != &o) {
            Context tmp(std::move(o));
            swap(tmp);
        }
        return *this;
    }
    ~Context() {
        if (errors_host_) (void)cudaFreeHost(errors_host_);
        if (blas) (void)cublasDestroy(blas);
        if (stream) (void)cudaStreamDestroy(stream);
        if (scratch_) (void)cudaFree(scratch_);
    }

    // Device scratch of at least `bytes`, valid until the next call (work
    // queued on the stream before that call may still use it: growing waits
    // for the stream before freeing the old buffer).
    void* scratch(std::size_t bytes) {
        if (bytes > scratch_bytes_) {
            if (scratch_) {
                DSV2_CUDA_CHECK(cudaStreamSynchronize(stream));  // queued work may still read it
                DSV2_CUDA_CHECK(cudaFree(scratch_));
            }
            const std::size_t grown = std::max(bytes, scratch_bytes_ * 2);
            scratch_ = nullptr;
            scratch_bytes_ = 0;
            DSV2_CUDA_CHECK(cudaMalloc(&scratch_, grown));
            scratch_bytes_ = grown;
        }
        return scratch_;
    }

    // Where kernels record bad device-resident indices (cuda_detail::DeviceErrors).
    cuda_detail::DeviceErrors* device_errors() const { return errors_device_; }

    // Called once the stream is synchronised: throws RangeError for what the
    // kernels recorded since the last call, and clears it.
    void throw_device_errors() {
        if (!errors_host_) return;  // moved from
        const cuda_detail::DeviceErrors e = *errors_host_;
        if (e.kinds == 0) return;
        *errors_host_ = {};
        if (e.kinds & cuda_detail::DeviceErrors::cache_slot)
            DSV2_FAIL(RangeError, "cache_write: token slot {} lies outside the cache's {} rows (pages x page_size); "
                      "nothing was written", e.value, e.limit);
        DSV2_FAIL(RangeError, "cache_gather/mla_decode: a block table entry is page {}, outside the cache's pages "
                  "[0, {}); its rows were read as zero", e.value, e.limit);
    }

private:
    void swap(Context& o) noexcept {
        std::swap(device, o.device);
        std::swap(stream, o.stream);
        std::swap(blas, o.blas);
        std::swap(scratch_, o.scratch_);
        std::swap(scratch_bytes_, o.scratch_bytes_);
        std::swap(errors_host_, o.errors_host_);
        std::swap(errors_device_, o.errors_device_);
    }
    void* scratch_ = nullptr;
    std::size_t scratch_bytes_ = 0;
    cuda_detail::DeviceErrors* errors_host_ = nullptr;    // mapped, pinned
    cuda_detail::DeviceErrors* errors_device_ = nullptr;  // the same memory, as the device sees it
};

// Number of CUDA devices; 0 when there is no device or no driver (never throws).
inline int cuda_device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

// Small transfers. copy_to_device returns once the host buffer may be reused;
// copy_to_host returns once the data is on the host.
template <class T>
void copy_to_device(Context<cuda>& ctx, const T* host, T* dst, std::int64_t n) {
    if (n <= 0) return;
    DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, host, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice,
                                    ctx.stream));
    DSV2_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
}
template <class T>
void copy_to_host(Context<cuda>& ctx, const T* src, T* host, std::int64_t n) {
    if (n <= 0) return;
    DSV2_CUDA_CHECK(cudaMemcpyAsync(host, src, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost,
                                    ctx.stream));
    DSV2_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    ctx.throw_device_errors();
}
inline void synchronize(Context<cuda>& ctx) {
    DSV2_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    ctx.throw_device_errors();
}

namespace cuda_detail {

// Element loads and stores in device code: storage types widen to the
// arithmetic type through the hardware conversions (round to nearest even,
// as dsv2::bf16 / dsv2::f16 do on the host).
template <class A, class S>
__device__ __forceinline__ A load(const S* p) {
    if constexpr (std::is_same_v<S, bf16>) {
        return static_cast<A>(__uint_as_float(static_cast<unsigned>(reinterpret_cast<const std::uint16_t*>(p)[0]) << 16));
    } else if constexpr (std::is_same_v<S, f16>) {
        return static_cast<A>(__half2float(reinterpret_cast<const __half*>(p)[0]));
    } else {
        return static_cast<A>(*p);
    }
}
template <class S, class A>
__device__ __forceinline__ void store(S* p, A v) {
    if constexpr (std::is_same_v<S, bf16>) {
        reinterpret_cast<__nv_bfloat16*>(p)[0] = __float2bfloat16_rn(static_cast<float>(v));
    } else if constexpr (std::is_same_v<S, f16>) {
        reinterpret_cast<__half*>(p)[0] = __float2half_rn(static_cast<float>(v));
    } else {
        *p = static_cast<S>(v);
    }
}

// Byte counts rounded up to 256, for carving scratch into aligned pieces.
inline std::size_t align_up(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

inline unsigned blocks_for(std::int64_t n, int threads) {
    const std::int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(b, 1), 1 << 30));
}

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <class A>
__device__ __forceinline__ A warp_max(A v) {
    for (int o = 16; o > 0; o >>= 1) {
        const A other = __shfl_xor_sync(0xffffffffu, v, o);
        v = other > v ? other : v;
    }
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
// every thread gets the total. `shared` holds 32 values.
template <class A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read from a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    A total = lane < warps ? shared[lane] : A(0);
    return warp_sum(total);
}
template <class A>
__device__ __forceinline__ A block_max(A v, A* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    A m = lane < warps ? shared[lane] : shared[0];
    return warp_max(m);
}

}  // namespace cuda_detail
}  // namespace dsv2
