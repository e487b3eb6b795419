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

namespace dsv2::bench {

using Ctx = Context<cpu>;

inline int bench_threads() { return Ctx::default_threads(); }

inline double bandwidth_bytes_per_s() {
    static const double bw = measure_bandwidth(bench_threads()).bytes_per_s;
    return bw;
}

// Times `body` in the benchmark loop and sets, per iteration, `bytes` and
// `flops` as rates, plus `roofline` = achieved bytes/s over the probe's.
template <class F>
void run_timed(benchmark::State& state, double bytes, double flops, F&& body) {
    const double bw = bandwidth_bytes_per_s();
    double seconds = 0;
    for (auto _ : state) {
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
