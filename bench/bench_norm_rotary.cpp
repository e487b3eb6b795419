// RMSNorm and rotary embedding: row-wise, memory-bound on activations.
// Sizes: decode (N = 1) and prefill (N = 512) at V2-Lite (D 2048, 16 heads)
// and V2 (D 5120, 128 heads).
#include "bench_common.hpp"

namespace {

using namespace dsv2;
using dsv2::bench::Ctx;

template <class T>
void BM_rmsnorm(benchmark::State& state) {
    const std::int64_t n = state.range(0), d = state.range(1);
    Ctx ctx;
    RMSNorm<T, cpu> norm(d, 1e-6);
    bench::fill(norm.weight);
    Tensor<float, cpu, 2> x({n, d}), y({n, d});
    bench::fill(x);
    const double bytes = 8.0 * static_cast<double>(n * d) + static_cast<double>(d * sizeof(T));
    bench::run_timed(state, bytes, 4.0 * static_cast<double>(n * d), [&] {
        norm.forward(ctx, x.cview(), y.view());
        benchmark::DoNotOptimize(y.data());
    });
}
BENCHMARK(BM_rmsnorm<float>)->Args({1, 2048})->Args({512, 2048})->Args({512, 5120})->UseRealTime();
BENCHMARK(BM_rmsnorm<bf16>)->Args({1, 2048})->Args({512, 2048})->Args({512, 5120})->UseRealTime();

// Rotary over the rope lanes of the query (N, H, 192) with Dr = 64.
void BM_rotary(benchmark::State& state) {
    const std::int64_t n = state.range(0), heads = state.range(1), dr = 64, dq = 192;
    Ctx ctx;
    const Config cfg = Config::deepseek_v2_lite();
    Rotary<float, cpu> rotary(ctx, cfg);
    Tensor<std::int64_t, cpu, 1> pos({n});
    for (std::int64_t i = 0; i < n; ++i) pos.data()[i] = 1000 + i;
    Tensor<float, cpu, 2> cos({n, dr / 2}), sin({n, dr / 2});
    Tensor<float, cpu, 3> q({n, heads, dq});
    bench::fill(q);
    const double bytes = 8.0 * static_cast<double>(n * heads * dr) + 8.0 * static_cast<double>(n * dr);
    bench::run_timed(state, bytes, 3.0 * static_cast<double>(n * heads * dr), [&] {
        rotary.tables(ctx, pos.cview(), cos.view(), sin.view());
        Rotary<float, cpu>::apply(ctx, cos.cview(), sin.cview(), q.view().slice(2, dq - dr, dq));
        benchmark::DoNotOptimize(q.data());
    });
}
BENCHMARK(BM_rotary)->Args({1, 16})->Args({512, 16})->Args({1, 128})->Args({512, 128})->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
