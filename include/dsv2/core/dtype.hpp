// Element types and their traits.
//
// dsv2 separates *storage* from *arithmetic*: a component templated on `T`
// stores its weights and its latent cache in `T`, but every activation and
// every reduction runs in `acc_t<T>` (f32 for the 16-bit types, f64 for f64).
// bf16 and f16 are therefore plain 2-byte storage types with explicit,
// round-to-nearest-even conversions; backends bit-cast them to
// `Eigen::bfloat16` / `__nv_bfloat16` internally when that is useful.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <type_traits>

#if defined(__CUDACC__)
#define DSV2_HD __host__ __device__
#else
#define DSV2_HD
#endif

namespace dsv2 {

// bfloat16: the top 16 bits of an IEEE binary32.
struct bf16 {
    std::uint16_t bits = 0;

    bf16() = default;
    DSV2_HD explicit bf16(float f) : bits(round(f)) {}
    DSV2_HD explicit operator float() const {
        return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
    }
    static constexpr bf16 from_bits(std::uint16_t b) {
        bf16 r;
        r.bits = b;
        return r;
    }

private:
    DSV2_HD static std::uint16_t round(float f) {
        const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN, keep sign
        }
        // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
        const std::uint32_t lsb = (u >> 16) & 1u;
        return static_cast<std::uint16_t>((u + 0x7fffu + lsb) >> 16);
    }
};

// IEEE binary16 (half precision).
struct f16 {
    std::uint16_t bits = 0;

    f16() = default;
    DSV2_HD explicit f16(float f) : bits(encode(f)) {}
    DSV2_HD explicit operator float() const { return decode(bits); }
    static constexpr f16 from_bits(std::uint16_t b) {
        f16 r;
        r.bits = b;
        return r;
    }

private:
    DSV2_HD static std::uint16_t encode(float f) {
        const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        const std::uint32_t sign = (u >> 16) & 0x8000u;
        const std::uint32_t abs = u & 0x7fffffffu;
        if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
        if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to Inf
        if (abs < 0x38800000u) {
            // Result is subnormal (or zero): scale so that the f16 subnormal
            // grid becomes the integer grid, and let the FPU round to even.
            const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // 2^24
            const auto m = static_cast<std::uint32_t>(std::nearbyint(scaled));
            return static_cast<std::uint16_t>(sign | m);
        }
        // Normal: rebias exponent (127 -> 15) and round the 13 dropped bits to even.
        const std::uint32_t lsb = (abs >> 13) & 1u;
        const std::uint32_t rounded = abs + 0xfffu + lsb;
        return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
    }
    DSV2_HD static float decode(std::uint16_t h) {
        const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
        const std::uint32_t exp = (h >> 10) & 0x1fu;
        const std::uint32_t man = h & 0x3ffu;
        if (exp == 0) {
            const float v = static_cast<float>(man) * 5.9604644775390625e-8f;  // 2^-24
            return sign ? -v : v;
        }
        if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
        return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
    }
};

static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2, "16-bit storage types must be 2 bytes");
static_assert(std::is_trivially_copyable_v<bf16> && std::is_trivially_copyable_v<f16>);

// Everything tests and kernels need to know about an element type, in one
// place, so nothing else hard-codes tolerances or names.
template <class T>
struct DTypeTraits;

template <>
struct DTypeTraits<double> {
    using acc = double;
    static constexpr std::string_view name = "f64";
    static constexpr std::string_view safetensors = "F64";
    // Golden tests: the reference is f64 computed from the same f32 weights.
    static constexpr double rtol = 1e-9, atol = 1e-10, nmse = 1e-20;
};
template <>
struct DTypeTraits<float> {
    using acc = float;
    static constexpr std::string_view name = "f32";
    static constexpr std::string_view safetensors = "F32";
    static constexpr double rtol = 2e-5, atol = 2e-5, nmse = 1e-10;
};
template <>
struct DTypeTraits<bf16> {
    using acc = float;
    static constexpr std::string_view name = "bf16";
    static constexpr std::string_view safetensors = "BF16";
    // bf16 keeps 8 significant bits: weights rounded to ~0.4%, errors add up
    // through a layer. The normalised squared error is the real gate.
    static constexpr double rtol = 1e-1, atol = 1e-1, nmse = 1e-3;
};
template <>
struct DTypeTraits<f16> {
    using acc = float;
    static constexpr std::string_view name = "f16";
    static constexpr std::string_view safetensors = "F16";
    static constexpr double rtol = 2e-2, atol = 2e-2, nmse = 1e-5;
};

// Weight-only int8 (core/quantized.hpp): a tag, not a storage type. Linear
// weights become int8 with one f32 scale per output row; what is small or
// numerically touchy stays dense in `dense_t<q8>` (below). Activations are
// f32. CPU only so far (layers/common.hpp says so at compile time).
struct q8 {};

template <>
struct DTypeTraits<q8> {
    using acc = float;
    static constexpr std::string_view name = "int8";
    // No `safetensors` name: int8 weights are quantized while loading from a
    // floating-point checkpoint, never read or written as int8.
    // Logits on the fixture models, tokens whose routing did not flip
    // (tests/test_int8.cpp): worst |err| 0.13, nmse 3.9e-4. The per-weight
    // error is up to half a step of the row's largest weight / 127.
    static constexpr double rtol = 1e-1, atol = 2e-1, nmse = 1e-3;
};

// Storage of everything that stays dense when linear weights are int8: norm
// weights, the embedding table (one row read per token, so quantizing saves
// no bandwidth) and the latent cache. T itself for every other element type.
// (The router gate is held in acc_t<T>: layers/router.hpp.)
template <class T>
using dense_t = std::conditional_t<std::is_same_v<T, q8>, bf16, T>;

template <class T>
concept ElementType = requires { typename DTypeTraits<std::remove_const_t<T>>::acc; };

// Arithmetic type of activations and reductions for storage type T.
template <class T>
using acc_t = typename DTypeTraits<std::remove_const_t<T>>::acc;

// Conversions between storage and arithmetic types, in one spelling for all.
template <class To, class From>
DSV2_HD inline To convert(From v) {
    if constexpr (std::is_same_v<To, From>) {
        return v;
    } else if constexpr (std::is_same_v<From, bf16> || std::is_same_v<From, f16>) {
        return static_cast<To>(static_cast<float>(v));
    } else if constexpr (std::is_same_v<To, bf16> || std::is_same_v<To, f16>) {
        return To(static_cast<float>(v));
    } else {
        return static_cast<To>(v);
    }
}

}  // namespace dsv2
