// Products y = x W^T at DeepSeek-V2-Lite shapes: decode (N = 1, GEMV,
// memory-bound: compare `roofline` with 1) and prefill (N = 512, GEMM,
// compute-bound: read `flops`, and `flop_roofline`, the fraction of the f32
// FMA peak measured in the same run).
#include "bench_common.hpp"

namespace {

using namespace dsv2;
using dsv2::bench::Ctx;

template <class T>
void BM_linear(benchmark::State& state) {
    const std::int64_t n = state.range(0), m = state.range(1), k = state.range(2);
    Ctx ctx;
    Tensor<T, cpu, 2> w({m, k});
    Tensor<float, cpu, 2> x({n, k}), y({n, m});
    bench::fill(w, 0.02);
    bench::fill(x);
    const double bytes = static_cast<double>(m * k) * sizeof(T) + 4.0 * static_cast<double>(n * (k + m));
    const double flops = 2.0 * static_cast<double>(n * m * k);
    const double seconds = bench::run_timed(state, bytes, flops, [&] {
        linear(ctx, x.cview(), w.cview(), y.view());
        benchmark::DoNotOptimize(y.data());
    });
#if defined(__x86_64__) && defined(__GNUC__)
    // Every product is f32 FMAs (weights widened): the FMA peak is the roof.
    // The bf16 dot-product rate is printed beside it, the measured reason.
    const double peak = bench::peak_flops(false);
    if (seconds > 0) state.counters["flop_roofline"] = flops * static_cast<double>(state.iterations()) / seconds / peak;
    state.counters["peak_GFLOPs"] = peak / 1e9;
    if (n > cpu_detail::kGemvRows) state.counters["bf16_dot_peak_GFLOPs"] = bench::peak_flops(true) / 1e9;
#endif
}

// int8 weights with per-row f32 scales (core/quantized.hpp).
void BM_linear_q8(benchmark::State& state) {
    const std::int64_t n = state.range(0), m = state.range(1), k = state.range(2);
    Ctx ctx;
    Tensor<float, cpu, 2> wf({m, k});
    bench::fill(wf, 0.02);
    const auto w = quantize(wf.cview());
    Tensor<float, cpu, 2> x({n, k}), y({n, m});
    bench::fill(x);
    const double bytes = static_cast<double>(w.bytes()) + 4.0 * static_cast<double>(n * (k + m));
    bench::run_timed(state, bytes, 2.0 * static_cast<double>(n * m * k), [&] {
        linear(ctx, x.cview(), w.cview(), y.view());
        benchmark::DoNotOptimize(y.data());
    });
}

// {N, M, K}: an expert's gate/up (1408 x 2048), its down (2048 x 1408), the
// dense MLP (10944 x 2048) and the LM head (102400 x 2048) at decode; the
// dense MLP and an expert batch of 48 tokens (512 tokens x 6 / 64) at prefill.
void shapes(benchmark::internal::Benchmark* b) {
    b->Args({1, 1408, 2048})->Args({1, 2048, 1408})->Args({1, 10944, 2048})->Args({1, 102400, 2048});
    b->Args({48, 1408, 2048})->Args({512, 10944, 2048});
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

// {N, M, K} for the prefill GEMM (gemm_panels.hpp) on an expert's gate/up
// projection: 16 and 64 tokens per expert (MoE prefill of a few hundred
// tokens), and 512 (a dense projection over a whole 512-token prompt).
void bf16_prefill(benchmark::internal::Benchmark* b) {
    b->Args({16, 1408, 2048})->Args({64, 1408, 2048})->Args({512, 1408, 2048});
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

BENCHMARK(BM_linear<float>)->Apply(shapes);
BENCHMARK(BM_linear<bf16>)->Apply(shapes);
BENCHMARK(BM_linear<bf16>)->Apply(bf16_prefill)->Name("BM_linear_bf16_prefill");
BENCHMARK(BM_linear<f16>)->Apply(shapes);
BENCHMARK(BM_linear_q8)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
