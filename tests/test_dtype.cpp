// bf16 / f16 storage types and DTypeTraits. Every expected value is computed
// here independently of include/dsv2/core/dtype.hpp: bf16 by truncation plus
// an explicit ties-to-even rule on the dropped bits; f16 by decoding with
// ldexp, rounding with a nearest-value search over the sorted f16 grid, and,
// where the CPU has it, by the F16C hardware conversion.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define DSV2_TEST_HAVE_X86 1
#endif

using dsv2::bf16;
using dsv2::f16;

namespace {

std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }
float float_of(std::uint32_t u) { return std::bit_cast<float>(u); }

// ---- bf16 reference: keep the top 16 bits, round the dropped 16 to even. ----
std::uint16_t bf16_expected(float f) {
    const std::uint32_t u = bits_of(f);
    std::uint32_t kept = u >> 16;
    const std::uint32_t dropped = u & 0xffffu;
    if (dropped > 0x8000u || (dropped == 0x8000u && (kept & 1u))) ++kept;
    return static_cast<std::uint16_t>(kept);
}

// ---- f16 reference decode: sign * 2^(e-15) * (1 + m/1024), or subnormal m * 2^-24. ----
double f16_decode_ref(std::uint16_t h) {
    const int sign = (h & 0x8000) ? -1 : 1;
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    if (e == 0x1f) return m == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
    if (e == 0) return sign * std::ldexp(static_cast<double>(m), -24);
    return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

// ---- f16 reference encode: nearest value of the f16 grid, ties to the even
// pattern; |x| >= 65520 (halfway from 65504 to the next power of two, whose
// even neighbour is 2^16) overflows to Inf. ----
struct F16Grid {
    std::vector<double> values;   // the 31744 non-negative finite f16 values, ascending
    std::vector<std::uint16_t> bits;
    F16Grid() {
        for (std::uint32_t h = 0; h < 0x7c00u; ++h) {
            values.push_back(f16_decode_ref(static_cast<std::uint16_t>(h)));
            bits.push_back(static_cast<std::uint16_t>(h));
        }
        REQUIRE(std::is_sorted(values.begin(), values.end()));
    }
    std::uint16_t encode(float f) const {
        const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
        if (std::isnan(f)) return static_cast<std::uint16_t>(sign | 0x7e00);
        const double a = std::fabs(static_cast<double>(f));
        if (a >= 65520.0) return static_cast<std::uint16_t>(sign | 0x7c00);
        const auto hi = std::lower_bound(values.begin(), values.end(), a);
        std::size_t i = static_cast<std::size_t>(hi - values.begin());
        if (i == values.size() || (*hi != a && i > 0)) {
            const std::size_t lo = i - 1;
            const double dlo = a - values[lo];
            const double dhi = i < values.size() ? values[i] - a : std::numeric_limits<double>::infinity();
            if (dlo < dhi || (dlo == dhi && (bits[lo] & 1) == 0)) i = lo;
        }
        return static_cast<std::uint16_t>(sign | bits[i]);
    }
};
const F16Grid& grid() {
    static const F16Grid g;
    return g;
}

#if DSV2_TEST_HAVE_X86
// The hardware conversion (round to nearest even), used where the CPU has F16C.
__attribute__((target("f16c"))) std::uint16_t f16c_encode(float f) {
    const __m128i h = _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return static_cast<std::uint16_t>(_mm_extract_epi16(h, 0));
}
__attribute__((target("f16c"))) float f16c_decode(std::uint16_t h) { return _cvtsh_ss(h); }
// CPUID leaf 1, ECX bit 29 (clang 14's __builtin_cpu_supports has no "f16c").
bool have_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#else
bool have_f16c() { return false; }
std::uint16_t f16c_encode(float) { return 0; }
float f16c_decode(std::uint16_t) { return 0; }
#endif

// Floats that probe every rounding boundary of both formats: for each of the
// 2^19 top-bit patterns (all exponents, all f16 mantissas) the dropped low
// 13 bits take the values around the f16 halfway point, and the low 16 bits
// those around the bf16 halfway point.
std::vector<float> boundary_probes() {
    std::vector<float> out;
    const std::uint32_t low13[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff};
    const std::uint32_t low16[] = {0x7fff, 0x8000, 0x8001, 0xffff};
    for (std::uint32_t top = 0; top < (1u << 19); ++top) {
        for (auto l : low13) out.push_back(float_of((top << 13) | l));
        if ((top & 7u) == 0)
            for (auto l : low16) out.push_back(float_of((top << 13) | l));
    }
    return out;
}

}  // namespace

TEST_CASE("bf16 encodes with truncation plus round-half-to-even on the dropped bits", "[dtype][bf16]") {
    std::int64_t mismatches = 0, checked = 0;
    std::uint32_t first_bad = 0;
    auto check = [&](float f) {
        if (std::isnan(f)) return;
        ++checked;
        if (bf16(f).bits != bf16_expected(f)) {
            if (mismatches++ == 0) first_bad = bits_of(f);
        }
    };
    for (float f : boundary_probes()) {
        check(f);
        check(-f);
    }
    std::mt19937 rng(7);
    for (int i = 0; i < 1'000'000; ++i) check(float_of(static_cast<std::uint32_t>(rng())));
    INFO("first mismatch at float bits 0x" << std::hex << first_bad);
    CHECK(checked > 7'000'000);
    CHECK(mismatches == 0);
}

TEST_CASE("bf16 exact halfway cases round to the even neighbour", "[dtype][bf16]") {
    // 1 + 2^-8 is exactly halfway between 1 (mantissa even) and 1 + 2^-7: down to 1.
    CHECK(bf16(1.0f + 0x1p-8f).bits == 0x3f80);
    // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
    CHECK(bf16(1.0f + 3 * 0x1p-8f).bits == 0x3f82);
    // Just above the halfway point goes up, just below goes down.
    CHECK(bf16(float_of(0x3f808001u)).bits == 0x3f81);
    CHECK(bf16(float_of(0x3f807fffu)).bits == 0x3f80);
    // Halfway with a carry into the exponent: 2 - 2^-8 rounds up to 2.
    CHECK(bf16(float_of(0x3fff8000u)).bits == 0x4000);
    CHECK(bf16(-1.0f - 0x1p-8f).bits == 0xbf80);
}

TEST_CASE("bf16 special values: NaN keeps its sign, Inf, overflow, signed zero, subnormals", "[dtype][bf16]") {
    const float inf = std::numeric_limits<float>::infinity();
    CHECK(bf16(inf).bits == 0x7f80);
    CHECK(bf16(-inf).bits == 0xff80);
    // FLT_MAX is past the largest bf16 (0x7f7f) by more than half an ulp: Inf.
    CHECK(bf16(std::numeric_limits<float>::max()).bits == 0x7f80);
    CHECK(bf16(-std::numeric_limits<float>::max()).bits == 0xff80);
    CHECK(bf16(float_of(0x7f7f7fffu)).bits == 0x7f7f);  // just under the halfway point: largest finite
    CHECK(bf16(0.0f).bits == 0x0000);
    CHECK(bf16(-0.0f).bits == 0x8000);
    CHECK(std::signbit(static_cast<float>(bf16::from_bits(0x8000))));
    // Float subnormals keep their top bits like any other value.
    CHECK(bf16(float_of(0x00010000u)).bits == 0x0001);
    CHECK(bf16(float_of(0x00008000u)).bits == 0x0000);  // halfway to the smallest bf16 subnormal: even (0)
    CHECK(bf16(float_of(0x00018000u)).bits == 0x0002);  // halfway from 1 to 2: even (2)

    // NaNs, including signalling ones whose payload sits only in the dropped
    // bits (truncation alone would turn them into Inf), stay NaN with their sign.
    for (std::uint32_t u : {0x7fc00000u, 0x7f800001u, 0x7f80ffffu, 0x7fffffffu, 0xffc00000u, 0xff800001u, 0xffffffffu}) {
        const bf16 b(float_of(u));
        INFO("input bits 0x" << std::hex << u << " -> 0x" << b.bits);
        CHECK(std::isnan(static_cast<float>(b)));
        CHECK(std::signbit(static_cast<float>(b)) == static_cast<bool>(u >> 31));
    }
}

TEST_CASE("bf16 round trip of all 65536 bit patterns", "[dtype][bf16]") {
    std::int64_t bad_value = 0, bad_bits = 0, bad_nan = 0;
    for (std::uint32_t h = 0; h < 0x10000u; ++h) {
        const auto b = bf16::from_bits(static_cast<std::uint16_t>(h));
        const float f = static_cast<float>(b);
        // Decoding is exactly the bits placed on top of a binary32.
        if (bits_of(f) != (h << 16)) ++bad_value;
        const bool nan = (h & 0x7fffu) > 0x7f80u;
        if (nan) {
            const bf16 back(f);
            if (!std::isnan(static_cast<float>(back)) || (back.bits & 0x8000u) != (h & 0x8000u)) ++bad_nan;
        } else if (bf16(f).bits != h) {
            ++bad_bits;
        }
    }
    CHECK(bad_value == 0);
    CHECK(bad_bits == 0);
    CHECK(bad_nan == 0);
}

TEST_CASE("f16 decodes every bit pattern as sign * 2^e * mantissa", "[dtype][f16]") {
    std::int64_t bad = 0, bad_hw = 0;
    const bool hw = have_f16c();
    for (std::uint32_t h = 0; h < 0x10000u; ++h) {
        const auto x = f16::from_bits(static_cast<std::uint16_t>(h));
        const float f = static_cast<float>(x);
        const double e = f16_decode_ref(static_cast<std::uint16_t>(h));
        if (std::isnan(e)) {
            if (!std::isnan(f) || std::signbit(f) != static_cast<bool>(h & 0x8000u)) ++bad;
        } else if (static_cast<double>(f) != e || std::signbit(f) != static_cast<bool>(h & 0x8000u)) {
            ++bad;
        }
        if (hw) {
            const float g = f16c_decode(static_cast<std::uint16_t>(h));
            if (!(std::isnan(g) ? std::isnan(f) : bits_of(g) == bits_of(f))) ++bad_hw;
        }
    }
    CHECK(bad == 0);
    CHECK(bad_hw == 0);
}

TEST_CASE("f16 round trip of all 65536 bit patterns", "[dtype][f16]") {
    std::int64_t bad_bits = 0, bad_nan = 0;
    for (std::uint32_t h = 0; h < 0x10000u; ++h) {
        const float f = static_cast<float>(f16::from_bits(static_cast<std::uint16_t>(h)));
        const f16 back(f);
        const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
        if (nan) {
            if (!std::isnan(static_cast<float>(back)) || (back.bits & 0x8000u) != (h & 0x8000u)) ++bad_nan;
        } else if (back.bits != h) {
            ++bad_bits;
        }
    }
    CHECK(bad_bits == 0);
    CHECK(bad_nan == 0);
}

TEST_CASE("f16 encodes every probed float as the nearest f16, ties to even", "[dtype][f16]") {
    const auto& g = grid();
    const bool hw = have_f16c();
    std::int64_t bad = 0, bad_hw = 0, checked = 0;
    std::uint32_t first_bad = 0, first_bad_hw = 0;
    auto check = [&](float f) {
        if (std::isnan(f)) return;
        ++checked;
        const std::uint16_t got = f16(f).bits;
        if (got != g.encode(f) && bad++ == 0) first_bad = bits_of(f);
        if (hw && got != f16c_encode(f) && bad_hw++ == 0) first_bad_hw = bits_of(f);
    };
    for (float f : boundary_probes()) {
        check(f);
        check(-f);
    }
    // The f16 subnormal grid (spacing 2^-24): every midpoint and a float ulp either side.
    for (int k = 0; k <= 1024; ++k) {
        const float mid = static_cast<float>(std::ldexp(k + 0.5, -24));
        for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1.0f)}) {
            check(f);
            check(-f);
        }
    }
    std::mt19937 rng(11);
    for (int i = 0; i < 1'000'000; ++i) check(float_of(static_cast<std::uint32_t>(rng())));
    INFO("hardware F16C reference " << (hw ? "used" : "not available on this CPU"));
    INFO("first mismatch: 0x" << std::hex << first_bad << ", against F16C: 0x" << first_bad_hw);
    CHECK(checked > 7'000'000);
    CHECK(bad == 0);
    CHECK(bad_hw == 0);
}

TEST_CASE("f16 special values: overflow, Inf, NaN, subnormals, signed zero", "[dtype][f16]") {
    const float inf = std::numeric_limits<float>::infinity();
    CHECK(f16(65504.0f).bits == 0x7bff);  // largest finite
    CHECK(f16(65519.0f).bits == 0x7bff);  // below the halfway point 65520
    CHECK(f16(std::nextafter(65520.0f, 0.0f)).bits == 0x7bff);
    CHECK(f16(65520.0f).bits == 0x7c00);  // halfway, 0x7bff is odd: rounds to Inf
    CHECK(f16(-65520.0f).bits == 0xfc00);
    CHECK(f16(1e6f).bits == 0x7c00);
    CHECK(f16(std::numeric_limits<float>::max()).bits == 0x7c00);
    CHECK(f16(inf).bits == 0x7c00);
    CHECK(f16(-inf).bits == 0xfc00);
    CHECK(static_cast<float>(f16::from_bits(0x7c00)) == inf);
    CHECK(static_cast<float>(f16::from_bits(0xfc00)) == -inf);

    // Smallest subnormal 2^-24, largest subnormal 1023 * 2^-24, smallest normal 2^-14.
    CHECK(f16(0x1p-24f).bits == 0x0001);
    CHECK(static_cast<float>(f16::from_bits(0x0001)) == 0x1p-24f);
    CHECK(static_cast<float>(f16::from_bits(0x03ff)) == 1023 * 0x1p-24f);
    CHECK(static_cast<float>(f16::from_bits(0x0400)) == 0x1p-14f);
    CHECK(f16(0x1p-25f).bits == 0x0000);                              // halfway to 2^-24: even (zero)
    CHECK(f16(std::nextafter(0x1p-25f, 1.0f)).bits == 0x0001);        // just above: smallest subnormal
    CHECK(f16(3 * 0x1p-25f).bits == 0x0002);                          // 1.5 * 2^-24: even (2)
    CHECK(f16(-0x1p-24f).bits == 0x8001);
    CHECK(f16(1e-10f).bits == 0x0000);
    CHECK(f16(-1e-10f).bits == 0x8000);                               // underflow keeps the sign
    CHECK(f16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
    CHECK(f16((1023.5f) * 0x1p-24f).bits == 0x0400);                  // rounds up into the normals
    CHECK(f16(0.0f).bits == 0x0000);
    CHECK(f16(-0.0f).bits == 0x8000);
    CHECK(std::signbit(static_cast<float>(f16::from_bits(0x8000))));

    // Normal halfway cases: 1 + 2^-11 sits between 1 (even) and 1 + 2^-10.
    CHECK(f16(1.0f + 0x1p-11f).bits == 0x3c00);
    CHECK(f16(1.0f + 3 * 0x1p-11f).bits == 0x3c02);
    CHECK(f16(2.0f - 0x1p-12f).bits == 0x4000);  // halfway below 2, odd mantissa: carry into the exponent

    for (std::uint32_t u : {0x7fc00000u, 0x7f800001u, 0x7fffffffu, 0xffc00000u, 0xff800001u}) {
        const f16 h(float_of(u));
        INFO("input bits 0x" << std::hex << u << " -> 0x" << h.bits);
        CHECK(std::isnan(static_cast<float>(h)));
        CHECK(std::signbit(static_cast<float>(h)) == static_cast<bool>(u >> 31));
    }
}

TEST_CASE("convert<> goes through float for the 16-bit types and is exact where it should be", "[dtype]") {
    CHECK(dsv2::convert<double>(bf16::from_bits(0x3fc0)) == 1.5);
    CHECK(dsv2::convert<double>(f16::from_bits(0x3e00)) == 1.5);
    CHECK(dsv2::convert<bf16>(1.5).bits == 0x3fc0);
    CHECK(dsv2::convert<f16>(1.5).bits == 0x3e00);
    CHECK(dsv2::convert<f16>(bf16::from_bits(0x3fc0)).bits == 0x3e00);
    CHECK(dsv2::convert<float>(0.1) == 0.1f);
    CHECK(dsv2::convert<double>(0.1f) == static_cast<double>(0.1f));
}

TEST_CASE("DTypeTraits: accumulation types, names and tolerances", "[dtype]") {
    using dsv2::DTypeTraits;
    STATIC_REQUIRE(std::is_same_v<dsv2::acc_t<double>, double>);
    STATIC_REQUIRE(std::is_same_v<dsv2::acc_t<float>, float>);
    STATIC_REQUIRE(std::is_same_v<dsv2::acc_t<bf16>, float>);
    STATIC_REQUIRE(std::is_same_v<dsv2::acc_t<f16>, float>);
    STATIC_REQUIRE(std::is_same_v<dsv2::acc_t<const bf16>, float>);
    STATIC_REQUIRE(dsv2::ElementType<double> && dsv2::ElementType<const f16>);
    STATIC_REQUIRE(!dsv2::ElementType<int>);
    CHECK(DTypeTraits<double>::name == "f64");
    CHECK(DTypeTraits<float>::name == "f32");
    CHECK(DTypeTraits<bf16>::name == "bf16");
    CHECK(DTypeTraits<f16>::name == "f16");
    CHECK(DTypeTraits<double>::safetensors == "F64");
    CHECK(DTypeTraits<float>::safetensors == "F32");
    CHECK(DTypeTraits<bf16>::safetensors == "BF16");
    CHECK(DTypeTraits<f16>::safetensors == "F16");
    // The f64 and f32 gates must stay tight: loosening them would hide real bugs.
    CHECK(DTypeTraits<double>::rtol <= 1e-9);
    CHECK(DTypeTraits<float>::rtol <= 2e-5);
    // Tolerances widen as the format narrows.
    CHECK(DTypeTraits<float>::rtol > DTypeTraits<double>::rtol);
    CHECK(DTypeTraits<f16>::rtol > DTypeTraits<float>::rtol);
    CHECK(DTypeTraits<bf16>::rtol >= DTypeTraits<f16>::rtol);
}
