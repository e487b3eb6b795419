// Helpers of the CUDA parity runner: the same random values on both
// backends, read-back to double, and the checks with their report lines.
#pragma once

#include <dsv2/cuda.cuh>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace dsv2::gpu_test {

struct Tally {
    int passed = 0, failed = 0;
    std::vector<std::string> failures;
};
inline Tally& tally() {
    static Tally t;
    return t;
}
inline std::string& filter() {
    static std::string f;
    return f;
}
inline bool selected(const std::string& name) { return filter().empty() || name.find(filter()) != std::string::npos; }

// The normalised squared error allowed for storage type T.
template <class T>
constexpr double tol() {
    return DTypeTraits<T>::nmse;
}

inline void record(const std::string& name, bool ok, const std::string& detail) {
    std::printf("%s  %-70s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
    std::fflush(stdout);
    if (ok) {
        ++tally().passed;
    } else {
        ++tally().failed;
        tally().failures.push_back(name + "  " + detail);
    }
}

// NaN/Inf must sit at the same places; then Σ(g - c)² / Σ c² <= nmse.
inline void check(const std::string& name, const std::vector<double>& gpu, const std::vector<double>& cpu,
                  double nmse_tol) {
    if (!selected(name)) return;
    if (gpu.size() != cpu.size()) {
        record(name, false, fmt::format("sizes differ: {} vs {}", gpu.size(), cpu.size()));
        return;
    }
    std::int64_t non_finite = 0;
    double err2 = 0, ref2 = 0, worst = 0;
    std::size_t worst_at = 0;
    for (std::size_t i = 0; i < gpu.size(); ++i) {
        const bool fg = std::isfinite(gpu[i]), fc = std::isfinite(cpu[i]);
        if (!fg || !fc) {
            if (fg != fc || (std::isnan(gpu[i]) != std::isnan(cpu[i])) || (!std::isnan(cpu[i]) && gpu[i] != cpu[i]))
                ++non_finite;
            continue;
        }
        const double d = gpu[i] - cpu[i];
        err2 += d * d;
        ref2 += cpu[i] * cpu[i];
        if (std::abs(d) > worst) {
            worst = std::abs(d);
            worst_at = i;
        }
    }
    const double nmse = err2 / std::max(ref2, 1e-300);
    const bool ok = non_finite == 0 && nmse <= nmse_tol;
    record(name, ok,
           fmt::format("nmse {:.2e} (tol {:.0e}), worst |d| {:.2e} at {}{}", nmse, nmse_tol, worst, worst_at,
                       non_finite ? fmt::format(", {} non-finite mismatches", non_finite) : std::string()));
}

inline void check_exact(const std::string& name, const std::vector<std::int64_t>& gpu,
                        const std::vector<std::int64_t>& cpu) {
    if (!selected(name)) return;
    std::int64_t bad = 0, first = -1;
    for (std::size_t i = 0; i < std::min(gpu.size(), cpu.size()); ++i) {
        if (gpu[i] != cpu[i]) {
            if (first < 0) first = static_cast<std::int64_t>(i);
            ++bad;
        }
    }
    const bool ok = gpu.size() == cpu.size() && bad == 0;
    record(name, ok, ok ? fmt::format("{} values identical", cpu.size())
                        : fmt::format("{} of {} differ, first at {}", bad, cpu.size(), first));
}

// Chosen experts must match, except where two candidates' scores are equal
// to rounding (then either choice is right).
inline void check_ids(const std::string& name, const std::vector<std::int64_t>& gpu, const std::vector<std::int64_t>& cpu,
                      const std::vector<double>& cpu_scores, std::int64_t k) {
    if (!selected(name)) return;
    const std::int64_t n = std::ssize(cpu) / k, e = std::ssize(cpu_scores) / std::max<std::int64_t>(n, 1);
    std::int64_t ties = 0, bad = 0;
    for (std::int64_t t = 0; t < n; ++t) {
        for (std::int64_t j = 0; j < k; ++j) {
            const std::int64_t a = gpu[t * k + j], b = cpu[t * k + j];
            if (a == b) continue;
            if (a >= 0 && a < e && std::abs(cpu_scores[t * e + a] - cpu_scores[t * e + b]) <= 1e-5) {
                ++ties;
            } else {
                ++bad;
            }
        }
    }
    record(name, bad == 0, fmt::format("{} ids, {} differ{}", cpu.size(), bad, ties ? fmt::format(" ({} near-ties)", ties) : ""));
}

// Per token: 1 if its routing agrees on both backends (the same expert set in
// every record), 0 if it first differs at a near-tie, -1 if it first differs
// where the CPU's scores of the swapped experts are far apart (a real fault).
// On 16-bit weights the GPU rounds activations before its tensor-core GEMMs
// and the absorbed decode rounds the query and probabilities, so two experts
// whose scores agree to that rounding may swap; such a token's output then
// legitimately differs and is left out of the comparison (and counted).
// "Near" is 8·sqrt(nmse tolerance) of the token's top score: the relative
// error the tolerance allows, with room.
inline std::vector<int> same_routing(const std::vector<RoutingRecord>& a, const std::vector<RoutingRecord>& b,
                                     std::int64_t n_tokens, double nmse_tol) {
    std::vector<int> same(static_cast<std::size_t>(n_tokens), 1);
    const double rel = 8 * std::sqrt(nmse_tol);
    for (std::size_t r = 0; r < std::min(a.size(), b.size()); ++r) {
        const std::int64_t k = a[r].top_k, e = a[r].n_experts;
        if (k == 0 || a[r].n_tokens != n_tokens) continue;
        for (std::int64_t t = 0; t < n_tokens; ++t) {
            if (same[static_cast<std::size_t>(t)] != 1) continue;  // judged at its first difference
            std::vector<std::int32_t> x(a[r].idx.begin() + t * k, a[r].idx.begin() + (t + 1) * k);
            std::vector<std::int32_t> y(b[r].idx.begin() + t * k, b[r].idx.begin() + (t + 1) * k);
            std::sort(x.begin(), x.end());
            std::sort(y.begin(), y.end());
            if (x == y) continue;
            const auto score = [&](std::int32_t id) {
                return id >= 0 && id < e ? a[r].scores[static_cast<std::size_t>(t * e + id)] : -1e300;
            };
            double top = 0, lowest_kept = 1e300, highest_swapped = -1e300;
            for (std::int32_t id : x) top = std::max(top, std::abs(score(id)));
            for (std::int32_t id : x)
                if (!std::binary_search(y.begin(), y.end(), id)) lowest_kept = std::min(lowest_kept, score(id));
            for (std::int32_t id : y)
                if (!std::binary_search(x.begin(), x.end(), id)) highest_swapped = std::max(highest_swapped, score(id));
            same[static_cast<std::size_t>(t)] = std::abs(lowest_kept - highest_swapped) <= rel * top ? 0 : -1;
        }
    }
    return same;
}

// check() over the rows (of `width` values) whose routing agreed. Rows whose
// routing differs at a near-tie are left out and counted; one that differs
// elsewhere fails the check.
inline void check_rows(const std::string& name, const std::vector<double>& gpu, const std::vector<double>& cpu,
                       std::int64_t width, const std::vector<int>& routing, double nmse_tol) {
    if (!selected(name)) return;
    std::vector<double> g, c;
    std::int64_t ties = 0, far = 0;
    for (std::size_t t = 0; t < routing.size(); ++t) {
        if (routing[t] != 1) {
            ++(routing[t] == 0 ? ties : far);
            continue;
        }
        const auto b = static_cast<std::ptrdiff_t>(t) * width;
        if (b + width > std::ssize(gpu) || b + width > std::ssize(cpu)) break;
        g.insert(g.end(), gpu.begin() + b, gpu.begin() + b + width);
        c.insert(c.end(), cpu.begin() + b, cpu.begin() + b + width);
    }
    if (far > 0) {
        record(name, false, fmt::format("{} of {} tokens routed differently where the scores are not near a tie", far,
                                        routing.size()));
        return;
    }
    if (g.empty()) {
        record(name, true, fmt::format("all {} tokens swapped experts at near-ties; no row left to compare", ties));
        return;
    }
    check(ties ? fmt::format("{} ({} near-tie routing flips left out)", name, ties) : name, g, c, nmse_tol);
}

template <class E, int R>
struct Both {
    Tensor<E, cpu, R> h;
    Tensor<E, cuda, R> d;
};

// N(mean, scale) values, rounded to E, identical on both backends.
template <class E, int R>
Both<E, R> both(Context<cuda>& g, const std::array<std::int64_t, R>& shape, std::mt19937_64& rng, double scale = 1.0,
                double mean = 0.0) {
    Both<E, R> b{Tensor<E, cpu, R>(shape), Tensor<E, cuda, R>(shape)};
    std::normal_distribution<double> normal(mean, scale);
    for (std::int64_t i = 0; i < b.h.numel(); ++i) {
        const double v = normal(rng);
        if constexpr (std::is_same_v<E, double>) {
            b.h.data()[i] = v;
        } else {
            b.h.data()[i] = convert<E>(static_cast<float>(v));
        }
    }
    copy_to_device(g, b.h.data(), b.d.data(), b.h.numel());
    return b;
}

inline Both<std::int32_t, 1> both_ints(Context<cuda>& g, std::int64_t n, std::int64_t below, std::mt19937_64& rng) {
    Both<std::int32_t, 1> b{Tensor<std::int32_t, cpu, 1>({n}), Tensor<std::int32_t, cuda, 1>({n})};
    std::uniform_int_distribution<std::int32_t> any(0, static_cast<std::int32_t>(below - 1));
    for (std::int64_t i = 0; i < n; ++i) b.h.data()[i] = any(rng);
    copy_to_device(g, b.h.data(), b.d.data(), n);
    return b;
}

inline std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab, std::mt19937_64& rng) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    std::uniform_int_distribution<std::int32_t> any(0, static_cast<std::int32_t>(vocab - 1));
    for (auto& x : t) x = any(rng);
    return t;
}

// Read-back, widened to double. Views are expected contiguous.
template <class E, int R>
std::vector<double> values(Context<cuda>& g, View<const E, cuda, R> v) {
    std::vector<std::remove_const_t<E>> host(static_cast<std::size_t>(v.numel()));
    copy_to_host(g, v.data, host.data(), v.numel());
    std::vector<double> out(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) out[i] = convert<double>(host[i]);
    return out;
}
template <class E, int R>
std::vector<double> values(Context<cuda>& g, const Tensor<E, cuda, R>& t) {
    return values<E, R>(g, t.cview());
}
template <class E, int R>
std::vector<double> values(const Tensor<E, cpu, R>& t) {
    std::vector<double> out(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = convert<double>(t.data()[i]);
    return out;
}
template <int R>
std::vector<std::int64_t> ints(Context<cuda>& g, const Tensor<std::int32_t, cuda, R>& t) {
    std::vector<std::int32_t> host(static_cast<std::size_t>(t.numel()));
    copy_to_host(g, t.data(), host.data(), t.numel());
    return {host.begin(), host.end()};
}
template <int R>
std::vector<std::int64_t> ints(const Tensor<std::int32_t, cpu, R>& t) {
    return {t.data(), t.data() + t.numel()};
}

template <class E, int R>
Tensor<E, cuda, R> wc_on(Context<cuda>& g, const Tensor<E, cpu, R>& t) {
    Tensor<E, cuda, R> d(t.shape());
    copy_to_device(g, t.data(), d.data(), t.numel());
    return d;
}

inline int summary() {
    const Tally& t = tally();
    std::printf("\n%d passed, %d failed\n", t.passed, t.failed);
    for (const auto& f : t.failures) std::printf("  FAILED %s\n", f.c_str());
    return t.failed == 0 && t.passed > 0 ? 0 : 1;
}

}  // namespace dsv2::gpu_test
