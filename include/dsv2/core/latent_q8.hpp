// An 8-bit row of the MLA latent cache: [c_kv | k_pe] with c_kv in int8 and
// k_pe kept in bf16. Per token and layer (DeepSeek-V2: rank 512, rope 64):
//   bytes [0, rank)             c_kv, one byte per lane: round(x / scale) + 128
//   bytes [rank, +4 · groups)   f32 scale per group of `group` lanes (max |x| / 127)
//   bytes [.., +2 · rope)       k_pe in bf16 (the rotary key carries position;
//                               8 bits of it would blur the positions apart)
// 656 bytes for V2 instead of 1152 in bf16. The group is gcd(rank, 128):
// four scales per 512-lane row, so a channel that is large in every token
// (RMSNorm's gain) costs the precision of its own group only.
//
// The offset (+128) makes the bytes unsigned, as VNNI's vpdpbusd wants one
// operand; the decode kernel subtracts 128 · Σq once per call instead of
// storing anything per row.
#pragma once

#include "dsv2/core/dtype.hpp"
#include "dsv2/core/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>

namespace dsv2 {

struct LatentQ8Format {
    std::int64_t rank = 0;   // kv_lora_rank: the int8 lanes
    std::int64_t rope = 0;   // qk_rope_head_dim: the bf16 lanes
    std::int64_t group = 0;  // lanes per scale: gcd(rank, kMaxGroup)

    static constexpr std::int64_t kMaxGroup = 128;

    static LatentQ8Format make(std::int64_t rank, std::int64_t rope) {
        DSV2_CHECK(rank > 0 && rank % 4 == 0 && rope >= 0, ShapeError,
                   "[latent q8] rank {}, rope {}: the rank must be a positive multiple of 4 and the rope width at "
                   "least 0",
                   rank, rope);
        return LatentQ8Format{rank, rope, std::gcd(rank, kMaxGroup)};
    }

    std::int64_t width() const { return rank + rope; }  // lanes of a row
    std::int64_t groups() const { return rank / group; }
    std::int64_t scales_offset() const { return rank; }
    std::int64_t rope_offset() const { return rank + 4 * groups(); }
    std::int64_t row_bytes() const { return rope_offset() + 2 * rope; }

    float scale(const std::uint8_t* row, std::int64_t g) const {
        float s;
        std::memcpy(&s, row + scales_offset() + 4 * g, sizeof s);
        return s;
    }
    float rope_lane(const std::uint8_t* row, std::int64_t i) const {
        std::uint16_t b;
        std::memcpy(&b, row + rope_offset() + 2 * i, sizeof b);
        return static_cast<float>(bf16::from_bits(b));
    }
};

// x (rank + rope floats) into one row. A group holding a NaN or infinity gets
// a NaN scale, so the row reads back as NaN rather than as plausible numbers.
inline void quantize_latent_row(const LatentQ8Format& f, const float* x, std::uint8_t* row) {
    const std::int64_t g = f.group;
    for (std::int64_t k = 0; k < f.groups(); ++k) {
        const float* xg = x + k * g;
        float amax = 0.0f;
        bool finite = true;
        for (std::int64_t i = 0; i < g; ++i) {
            finite = finite && std::isfinite(xg[i]);
            amax = std::max(amax, std::fabs(xg[i]));
        }
        const float scale = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
        const float inv = finite && amax > 0.0f ? 127.0f / amax : 0.0f;
        for (std::int64_t i = 0; i < g; ++i) {
            const float v = std::clamp(std::nearbyint(finite ? xg[i] * inv : 0.0f), -127.0f, 127.0f);
            row[k * g + i] = static_cast<std::uint8_t>(static_cast<int>(v) + 128);
        }
        std::memcpy(row + f.scales_offset() + 4 * k, &scale, sizeof scale);
    }
    for (std::int64_t i = 0; i < f.rope; ++i) {
        const std::uint16_t b = bf16(x[f.rank + i]).bits;
        std::memcpy(row + f.rope_offset() + 2 * i, &b, sizeof b);
    }
}

// One row back into rank + rope floats.
inline void dequantize_latent_row(const LatentQ8Format& f, const std::uint8_t* row, float* x) {
    const std::int64_t g = f.group;
    for (std::int64_t k = 0; k < f.groups(); ++k) {
        const float s = f.scale(row, k);
        for (std::int64_t i = 0; i < g; ++i) x[k * g + i] = s * static_cast<float>(int{row[k * g + i]} - 128);
    }
    for (std::int64_t i = 0; i < f.rope; ++i) x[f.rank + i] = f.rope_lane(row, i);
}

}  // namespace dsv2
