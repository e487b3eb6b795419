// Rotary position embedding on the CPU, in the Hugging Face DeepSeek-V2
// layout: the rope slice is de-interleaved (even lanes, then odd lanes) and
// then rotated, so pair (x[2i], x[2i+1]) lands at (out[i], out[i + d/2]).
#pragma once

#include "dsv2/backend/cpu/context.hpp"

#include <cmath>

namespace dsv2 {

// cos/sin of position * inv_freq, scaled by the YaRN magnitude `mscale`.
// Angles are formed in double: at position 1e5 an f32 product is already
// off by ~1e-2 radians.
template <class A>
void rotary_tables(Context<cpu>& ctx,
                   View<const double, cpu, 1> inv_freq,         // (Dr/2)
                   double mscale,
                   View<const std::int64_t, cpu, 1> positions,  // (N)
                   View<A, cpu, 2> cos,                         // (N, Dr/2)
                   View<A, cpu, 2> sin)                         // (N, Dr/2)
{
    const std::int64_t n = positions.shape[0], half = inv_freq.shape[0];
    DSV2_CHECK(cos.shape[0] == n && cos.shape[1] == half && sin.shape == cos.shape, ShapeError,
               "rotary_tables: {} positions, {} frequencies, cos {}, sin {}", n, half,
               shape_str(cos.shape), shape_str(sin.shape));
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * half > 16384)
    for (std::int64_t t = 0; t < n; ++t) {
        const double p = static_cast<double>(positions(t));
        for (std::int64_t i = 0; i < half; ++i) {
            const double angle = p * inv_freq(i);
            cos(t, i) = static_cast<A>(std::cos(angle) * mscale);
            sin(t, i) = static_cast<A>(std::sin(angle) * mscale);
        }
    }
}

// Rotates x[t, h, :] in place with the tables of token t.
template <class A>
void apply_rotary(Context<cpu>& ctx,
                  std::type_identity_t<View<const A, cpu, 2>> cos,  // (N, Dr/2)
                  std::type_identity_t<View<const A, cpu, 2>> sin,  // (N, Dr/2)
                  View<A, cpu, 3> x)          // (N, H, Dr), any strides, unit inner stride
{
    const std::int64_t n = x.shape[0], heads = x.shape[1], d = x.shape[2], half = d / 2;
    DSV2_CHECK(d % 2 == 0 && cos.shape[0] == n && cos.shape[1] == half && sin.shape == cos.shape &&
                   x.stride[2] == 1,
               ShapeError, "apply_rotary: x {}, cos {}", shape_str(x.shape), shape_str(cos.shape));
    constexpr std::int64_t kMaxRope = 1024;
    DSV2_CHECK(d <= kMaxRope, Unsupported, "apply_rotary: rope dim {} exceeds {}", d, kMaxRope);
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * heads * d > 32768)
    for (std::int64_t t = 0; t < n; ++t) {
        A tmp[kMaxRope];
        for (std::int64_t h = 0; h < heads; ++h) {
            A* v = &x(t, h, 0);
            for (std::int64_t i = 0; i < d; ++i) tmp[i] = v[i];
            for (std::int64_t i = 0; i < half; ++i) {
                const A c = cos(t, i), s = sin(t, i), even = tmp[2 * i], odd = tmp[2 * i + 1];
                v[i] = even * c - odd * s;
                v[i + half] = odd * c + even * s;
            }
        }
    }
}

}  // namespace dsv2
