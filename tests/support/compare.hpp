// Golden comparison: NaN/Inf first, then every element within
// atol + rtol·|expected| and the normalised squared error within bound, with
// a failure message naming the tensor, its shape, how many elements are
// bad, the worst one and the first few bad indices. Never "most elements".
#pragma once

#include <catch2/catch.hpp>
#include <dsv2/core/dtype.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace dsv2::test {

struct Tolerance {
    double rtol, atol, nmse;
};
template <class T>
constexpr Tolerance tolerance() {
    return {DTypeTraits<T>::rtol, DTypeTraits<T>::atol, DTypeTraits<T>::nmse};
}

struct Measured {
    double max_abs = 0, max_rel = 0, nmse = 0;
    std::int64_t count = 0;
};

// dtype name -> tensor name -> worst error seen.
inline std::map<std::string, std::map<std::string, Measured>>& error_registry() {
    static std::map<std::string, std::map<std::string, Measured>> r;
    return r;
}

inline void print_error_report() {
    auto& r = error_registry();
    if (r.empty()) return;
    fmt::print("\nMeasured error against the f64 reference (worst over the run):\n");
    fmt::print("  {:<6} {:<44} {:>11} {:>11} {:>11}\n", "dtype", "tensor", "max |err|", "max rel", "nmse");
    for (const auto& [dtype, tensors] : r)
        for (const auto& [name, m] : tensors)
            fmt::print("  {:<6} {:<44} {:>11.3e} {:>11.3e} {:>11.3e}\n", dtype, name, m.max_abs, m.max_rel, m.nmse);
}

// Compares `actual` with `expected` (both flattened, same order).
inline void compare(const std::string& name, std::string_view dtype, std::span<const double> actual,
                    std::span<const double> expected, const std::vector<std::int64_t>& shape, Tolerance tol) {
    INFO(fmt::format("{} [{}] shape ({})", name, dtype, fmt::join(shape, ", ")));
    REQUIRE(actual.size() == expected.size());
    std::int64_t non_finite = 0, bad = 0;
    std::vector<std::size_t> first_bad;
    double worst = 0, err2 = 0, ref2 = 0, max_abs = 0, max_rel = 0;
    std::size_t worst_at = 0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
        const double a = actual[i], e = expected[i];
        if (!std::isfinite(a)) {
            ++non_finite;
            if (first_bad.size() < 5) first_bad.push_back(i);
            continue;
        }
        const double diff = std::abs(a - e);
        err2 += diff * diff;
        ref2 += e * e;
        max_abs = std::max(max_abs, diff);
        max_rel = std::max(max_rel, diff / std::max(std::abs(e), 1e-30));
        const double excess = diff / (tol.atol + tol.rtol * std::abs(e));
        if (excess > 1) {
            ++bad;
            if (first_bad.size() < 5) first_bad.push_back(i);
        }
        if (excess > worst) {
            worst = excess;
            worst_at = i;
        }
    }
    const double nmse = ref2 > 0 ? err2 / ref2 : err2;
    {
        static std::mutex m;
        std::lock_guard lock(m);
        auto& rec = error_registry()[std::string(dtype)][name];
        rec.max_abs = std::max(rec.max_abs, max_abs);
        rec.max_rel = std::max(rec.max_rel, max_rel);
        rec.nmse = std::max(rec.nmse, nmse);
        ++rec.count;
    }
    INFO(fmt::format("{} non-finite, {} of {} outside atol {:g} + rtol {:g}; worst at flat index {}: {} vs {}; "
                     "first bad indices {}; nmse {:.3e} (bound {:g})",
                     non_finite, bad, actual.size(), tol.atol, tol.rtol, worst_at,
                     actual.empty() ? 0.0 : actual[worst_at], expected.empty() ? 0.0 : expected[worst_at],
                     first_bad, nmse, tol.nmse));
    CHECK(non_finite == 0);
    CHECK(bad == 0);
    CHECK(nmse <= tol.nmse);
}

}  // namespace dsv2::test
