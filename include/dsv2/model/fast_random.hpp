// Seeded random weights for benchmarks at full model shapes. init_random
// (random.hpp) draws normals from one sequential generator — fine for tests,
// but billions of weights take minutes. This draws each element from a
// counter-based hash of (seed, tensor, index), in parallel, uniform with the
// same mean and variance as init_random's normals. Values differ from
// init_random's; shapes, scales and reproducibility do not.
#pragma once

#include "dsv2/model/random.hpp"

#include <cmath>
#include <string_view>
#include <vector>

namespace dsv2 {

namespace random_detail {
// SplitMix64: a fast, well-mixed 64-bit hash of a counter.
inline std::uint64_t splitmix64(std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
}  // namespace random_detail

// Fills `host` with mean + U(-a, a), a = stddev * sqrt(3), from stream `stream`.
template <class E>
void fill_uniform(std::vector<E>& host, double mean, double stddev, std::uint64_t stream, int threads) {
    const double a = stddev * std::sqrt(3.0);
    const auto n = static_cast<std::int64_t>(host.size());
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
        const std::uint64_t h = random_detail::splitmix64(stream ^ random_detail::splitmix64(static_cast<std::uint64_t>(i)));
        const double u = static_cast<double>(h >> 11) * 0x1.0p-53;  // [0, 1)
        host[static_cast<std::size_t>(i)] = convert<E>(static_cast<float>(mean + a * (2 * u - 1)));
    }
}

template <class Module, class B>
void init_random_fast(Context<B>& ctx, Module& module, std::uint64_t seed, int threads = 1) {
    std::uint64_t tensor = 0;
    module.for_each_weight([&](const std::string& name, auto& t) {
        using E = typename std::decay_t<decltype(t)>::value_type;
        const auto& shape = t.shape();
        const std::string_view nm(name);
        const bool is_norm = nm.ends_with("norm.weight"), is_bias = nm.ends_with("bias");
        const bool is_embedding = nm.ends_with("embed_tokens.weight");
        const double fan_in = static_cast<double>(shape.size() > 1 ? shape[1] : 1);
        const double stddev = is_norm ? 0.1 : is_bias ? 0.01 : is_embedding ? 1.0 : 1.0 / std::sqrt(fan_in);
        std::vector<E> host(static_cast<std::size_t>(t.numel()));
        fill_uniform(host, is_norm ? 1.0 : 0.0, stddev, random_detail::splitmix64(seed + 0x1000 * ++tensor), threads);
        upload(ctx, host, t);
    });
}

}  // namespace dsv2
