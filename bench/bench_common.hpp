// Shared pieces of the unit benchmarks: the bandwidth probe (measured once
// per process, same thread count), byte/FLOP counters reported as rates plus
// the fraction of the memory roofline, and a Step builder for components
// that read the latent cache. See docs/benchmarks.md for how to read them.
#pragma once

#include <benchmark/benchmark.h>
#include <dsv2/dsv2.hpp>
#include <dsv2/model/fast_random.hpp>
#include <dsv2/util/bandwidth.hpp>

#include <chrono>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace dsv2::bench {

using Ctx = Context<cpu>;

inline int bench_threads() { return Ctx::default_threads(); }

inline double bandwidth_bytes_per_s() {
    static const double bw = measure_bandwidth(bench_threads()).bytes_per_s;
    return bw;
}

#if defined(__x86_64__) && defined(__GNUC__)
// Peak FLOP/s of all benchmark threads (2 per multiply-add of the library's
// probe, backend/cpu/bf16_dot.hpp): f32 FMA (the roof of every product in
// linear()), or bf16 dot products where the CPU has AVX512-BF16 (half the FMA
// rate on the Xeon of docs/benchmarks.md, nearly twice it on Zen 5).
inline double peak_flops(bool bf16_dot) {
    constexpr std::int64_t kPeakIters = std::int64_t{1} << 22;
    static const auto probe = [](bool bf) {
        double total = 0;
#pragma omp parallel num_threads(bench_threads()) reduction(+ : total)
        total += 2.0 * (bf ? cpu_detail::peak_macs_per_s<true>(kPeakIters)
                           : cpu_detail::peak_macs_per_s<false>(kPeakIters));
        return total;
    };
    static const double f32 = probe(false);
    static const double bf = cpu_detail::has_avx512_bf16() ? probe(true) : f32;
    return bf16_dot ? bf : f32;
}
#endif

// Reads a buffer twice the size of a large L3 (512 MiB), so that what a
// benchmark touched before comes from memory again, as it does in a model
// whose weights stream through the caches between one layer's visits.
inline void evict_caches() {
    static std::vector<std::int64_t> buffer(std::size_t{64} << 20, 1);
    std::int64_t sum = 0;
#pragma omp parallel for num_threads(bench_threads()) reduction(+ : sum)
    for (std::size_t i = 0; i < buffer.size(); i += 8) sum += buffer[i];
    benchmark::DoNotOptimize(sum);
}

// Times `body` in the benchmark loop and sets, per iteration, `bytes` and
// `flops` as rates, plus `roofline` = achieved bytes/s over the probe's.
// With `cold`, the caches are evicted (untimed) before every iteration.
// Returns the seconds timed, for further rates.
template <class F>
double run_timed(benchmark::State& state, double bytes, double flops, F&& body, bool cold = false) {
    const double bw = bandwidth_bytes_per_s();
    double seconds = 0;
    for (auto _ : state) {
        if (cold) {
            state.PauseTiming();
            evict_caches();
            state.ResumeTiming();
        }
        const auto t0 = std::chrono::steady_clock::now();
        body();
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    using C = benchmark::Counter;
    state.counters["bytes"] = C(bytes, C::kIsIterationInvariantRate, C::kIs1024);
    state.counters["flops"] = C(flops, C::kIsIterationInvariantRate);
    const double iters = static_cast<double>(state.iterations());
    state.counters["roofline"] = seconds > 0 ? bytes * iters / seconds / bw : 0.0;
    state.counters["probe_GBps"] = bw / 1e9;
    return seconds;
}

// Random contents for a tensor (weights or cache pages).
template <class T, int R>
void fill(Tensor<T, cpu, R>& t, double stddev = 1.0, std::uint64_t seed = 1) {
    std::vector<T> host(static_cast<std::size_t>(t.numel()));
    fill_uniform(host, 0.0, stddev, seed, bench_threads());
    std::copy(host.begin(), host.end(), t.data());
}

// One step of `n` new tokens for a single sequence that already holds
// `context` tokens (their cache rows are whatever the cache holds).
template <class T>
struct BenchStep {
    using A = acc_t<T>;
    Step<A, cpu> step;
    Tensor<std::int64_t, cpu, 1> positions, slots;
    Tensor<A, cpu, 2> cos, sin;

    BenchStep(Ctx& ctx, const Rotary<T, cpu>& rotary, LatentCache<dense_t<T>, cpu>& cache, std::int64_t seq,
              std::int64_t n) {
        const std::int64_t first = cache.append(seq, n), half = rotary.inv_freq.numel();
        positions = Tensor<std::int64_t, cpu, 1>({n});
        slots = Tensor<std::int64_t, cpu, 1>({n});
        for (std::int64_t i = 0; i < n; ++i) {
            positions.data()[i] = first + i;
            slots.data()[i] = cache.slot(seq, first + i);
        }
        cos = Tensor<A, cpu, 2>({n, half});
        sin = Tensor<A, cpu, 2>({n, half});
        rotary.tables(ctx, positions.cview(), cos.view(), sin.view());
        step.sequences.push_back({seq, 0, n, first, cache.block_table(seq)});
        step.n_tokens = n;
        step.positions = positions.cview();
        step.slots = slots.cview();
        step.cos = cos.cview();
        step.sin = sin.cview();
    }
};

}  // namespace dsv2::bench
