// The router and DeepSeekMoE at the V2-Lite shape (64 routed experts of
// width 1408, 2 shared, top-6, D 2048) at 1, 16 and 512 tokens. Bytes are
// the weights of the experts actually used (each read once per call) plus
// the router and shared experts; at 512 tokens nearly every expert runs.
#include "bench_common.hpp"

#include <set>

namespace {

using namespace dsv2;
using dsv2::bench::Ctx;

Config lite() {
    Config cfg = Config::deepseek_v2_lite();
    cfg.num_hidden_layers = 2;
    return cfg;
}

template <class T>
void BM_router(benchmark::State& state) {
    const std::int64_t n = state.range(0);
    Ctx ctx;
    const Config cfg = lite();
    Router<T, cpu> router(cfg);
    init_random_fast(ctx, router, 5, ctx.threads);
    Workspace<cpu> ws;
    const std::int64_t e = cfg.n_routed_experts, k = cfg.num_experts_per_tok;
    Tensor<float, cpu, 2> x({n, cfg.hidden_size}), scores({n, e}), w({n, k});
    Tensor<std::int32_t, cpu, 2> idx({n, k});
    bench::fill(x);
    const double bytes = static_cast<double>(e * cfg.hidden_size * sizeof(T)) + 4.0 * static_cast<double>(n * cfg.hidden_size);
    bench::run_timed(state, bytes, 2.0 * static_cast<double>(n * e * cfg.hidden_size), [&] {
        ws.reset();
        router.forward(ctx, ws, x.cview(), scores.view(), idx.view(), w.view());
        benchmark::DoNotOptimize(idx.data());
    });
}
BENCHMARK(BM_router<float>)->Arg(1)->Arg(16)->Arg(512)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_router<bf16>)->Arg(1)->Arg(16)->Arg(512)->Unit(benchmark::kMicrosecond)->UseRealTime();

template <class T>
void BM_moe(benchmark::State& state) {
    const std::int64_t n = state.range(0);
    Ctx ctx;
    const Config cfg = lite();
    MoE<T, cpu> moe(cfg);
    init_random_fast(ctx, moe, 9, ctx.threads);
    Workspace<cpu> ws;
    Tensor<float, cpu, 2> x({n, cfg.hidden_size}), y({n, cfg.hidden_size});
    bench::fill(x);
    // Validate once, then time: count the experts this batch routes to.
    RoutingRecord rec;
    moe.forward(ctx, ws, x.cview(), y.view(), &rec);
    const std::set<std::int32_t> used(rec.idx.begin(), rec.idx.end());
    const double d = static_cast<double>(cfg.hidden_size), f = static_cast<double>(cfg.moe_intermediate_size);
    const double expert = 3 * d * f, shared = 3 * d * static_cast<double>(cfg.shared_intermediate_size());
    const double router = static_cast<double>(cfg.n_routed_experts) * d;
    const double bytes = (static_cast<double>(used.size()) * expert + shared + router) * sizeof(T);
    const double flops = 2.0 * static_cast<double>(n) * (static_cast<double>(cfg.num_experts_per_tok) * expert + shared + router);
    state.counters["experts_used"] = static_cast<double>(used.size());
    bench::run_timed(state, bytes, flops, [&] {
        ws.reset();
        moe.forward(ctx, ws, x.cview(), y.view());
        benchmark::DoNotOptimize(y.data());
    });
}
BENCHMARK(BM_moe<float>)->Arg(1)->Arg(16)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_moe<bf16>)->Arg(1)->Arg(16)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
