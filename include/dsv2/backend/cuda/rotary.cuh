// Rotary position embedding on the GPU, in the Hugging Face DeepSeek-V2
// layout (see backend/cpu/rotary.hpp): pair (x[2i], x[2i+1]) is rotated and
// lands at (out[i], out[i + d/2]).
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/elementwise.cuh"

namespace dsv2 {
namespace cuda_detail {

// Angles in double, as on the CPU.
template <class A>
__global__ void rotary_tables_kernel(const double* inv_freq, std::int64_t sf, double mscale, const std::int64_t* pos,
                                     std::int64_t sp, A* cos_out, std::int64_t ldc, A* sin_out, std::int64_t lds,
                                     std::int64_t n, std::int64_t half) {
    DSV2_CUDA_FOR_2D(t, i, n, half) {
        const double angle = static_cast<double>(pos[t * sp]) * inv_freq[i * sf];
        double s, c;
        sincos(angle, &s, &c);
        cos_out[t * ldc + i] = static_cast<A>(c * mscale);
        sin_out[t * lds + i] = static_cast<A>(s * mscale);
    }
}

// One block per (token, head): the head's lanes go through shared memory,
// since every output lane reads two input lanes.
template <class A>
__global__ void apply_rotary_kernel(const A* cos, std::int64_t ldc, const A* sin, std::int64_t lds, A* x,
                                    std::int64_t sx0, std::int64_t sx1, std::int64_t d) {
    extern __shared__ unsigned char rotary_smem[];
    A* tmp = reinterpret_cast<A*>(rotary_smem);
    const std::int64_t t = blockIdx.x, h = blockIdx.y, half = d / 2;
    A* v = x + t * sx0 + h * sx1;
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) tmp[i] = v[i];
    __syncthreads();
    for (std::int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        const A c = cos[t * ldc + i], s = sin[t * lds + i], even = tmp[2 * i], odd = tmp[2 * i + 1];
        v[i] = even * c - odd * s;
        v[i + half] = odd * c + even * s;
    }
}

}  // namespace cuda_detail

// cos/sin of position * inv_freq, scaled by `mscale`.
template <class A>
void rotary_tables(Context<cuda>& ctx,
                   View<const double, cuda, 1> inv_freq,         // (Dr/2)
                   double mscale,
                   View<const std::int64_t, cuda, 1> positions,  // (N)
                   View<A, cuda, 2> cos,                         // (N, Dr/2)
                   View<A, cuda, 2> sin)                         // (N, Dr/2)
{
    using namespace cuda_detail;
    const std::int64_t n = positions.shape[0], half = inv_freq.shape[0];
    DSV2_CHECK(cos.shape[0] == n && cos.shape[1] == half && sin.shape == cos.shape, ShapeError,
               "rotary_tables: {} positions, {} frequencies, cos {}, sin {}", n, half, shape_str(cos.shape),
               shape_str(sin.shape));
    DSV2_CHECK(cos.rows_contiguous() && sin.rows_contiguous(), ShapeError, "rotary_tables: rows must be contiguous");
    if (n * half == 0) return;
    rotary_tables_kernel<<<blocks_for(n * half, kThreads), kThreads, 0, ctx.stream>>>(
        inv_freq.data, inv_freq.stride[0], mscale, positions.data, positions.stride[0], cos.data, cos.stride[0],
        sin.data, sin.stride[0], n, half);
    DSV2_CUDA_LAUNCHED();
}

// Rotates x[t, h, :] in place with the tables of token t.
template <class A>
void apply_rotary(Context<cuda>& ctx,
                  std::type_identity_t<View<const A, cuda, 2>> cos,  // (N, Dr/2)
                  std::type_identity_t<View<const A, cuda, 2>> sin,  // (N, Dr/2)
                  View<A, cuda, 3> x)                                // (N, H, Dr), unit inner stride
{
    using namespace cuda_detail;
    const std::int64_t n = x.shape[0], heads = x.shape[1], d = x.shape[2], half = d / 2;
    DSV2_CHECK(d % 2 == 0 && cos.shape[0] == n && cos.shape[1] == half && sin.shape == cos.shape &&
                   x.stride[2] == 1 && cos.rows_contiguous() && sin.rows_contiguous(),
               ShapeError, "apply_rotary: x {}, cos {}", shape_str(x.shape), shape_str(cos.shape));
    constexpr std::int64_t kMaxRope = 1024;
    DSV2_CHECK(d <= kMaxRope, Unsupported, "apply_rotary: rope dim {} exceeds {}", d, kMaxRope);
    DSV2_CHECK(n <= INT32_MAX && heads <= 65535, Unsupported, "apply_rotary: {} tokens x {} heads is too many", n,
               heads);
    if (n * heads * d == 0) return;
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(heads));
    apply_rotary_kernel<<<grid, 64, static_cast<std::size_t>(d) * sizeof(A), ctx.stream>>>(
        cos.data, cos.stride[0], sin.data, sin.stride[0], x.data, x.stride[0], x.stride[1], d);
    DSV2_CUDA_LAUNCHED();
}

}  // namespace dsv2
