// Multi-head Latent Attention at the DeepSeek-V2-Lite shape (one layer):
// absorbed vs naive, prefill (N = 512 from an empty cache) and decode
// (N = 1) over contexts of 128 to 32K cached tokens. Decode bytes are the
// layer's weights plus the latent rows read; the naive path also
// decompresses K and V for the whole context, which is where it loses.
// int8 (q8) keeps the cache in bf16 and counts its weights' real bytes
// (int8 values plus one f32 scale per row). Decode at 4K and 32K also runs
// "cold" (fourth argument 1): every cache evicted before each call, as in a
// model, where the other layers' weights stream through between visits.
#include "bench_common.hpp"

namespace {

using namespace dsv2;
using dsv2::bench::Ctx;

template <class T>
void BM_mla(benchmark::State& state) {
    const auto path = state.range(0) == 0 ? AttentionPath::absorbed : AttentionPath::naive;
    const std::int64_t context = state.range(1), n = state.range(2);
    const bool cold = state.range(3) != 0;
    Ctx ctx;
    Config cfg = Config::deepseek_v2_lite();
    cfg.num_hidden_layers = 1;
    MLA<T, cpu> mla(cfg);
    init_random_fast(ctx, mla, 3, ctx.threads);
    mla.path = path;
    Rotary<T, cpu> rotary(ctx, cfg);
    auto cache = MLA<T, cpu>::Cache::for_config(ctx, cfg, context + n, 1);
    {
        // Cached rows of magnitude ~1, as kv_a_layernorm leaves them.
        Tensor<dense_t<T>, cpu, 1> rows({cache.capacity_tokens() * cache.width()});
        bench::fill(rows);
        std::copy(rows.data(), rows.data() + rows.numel(), cache.layer(0).data);
    }
    const auto seq = cache.add_sequence();
    cache.append(seq, context);
    Workspace<cpu> ws;
    Tensor<float, cpu, 2> x({n, cfg.hidden_size}), y({n, cfg.hidden_size});
    bench::fill(x);

    double weight_params = 0, weight_bytes = 0;
    mla.for_each_weight([&](const std::string&, auto& t) {
        weight_params += static_cast<double>(t.numel());
        weight_bytes += static_cast<double>(t.bytes());
    });
    const double s = static_cast<double>(context + n), h = static_cast<double>(cfg.num_attention_heads);
    const double cache_bytes = s * static_cast<double>(cfg.latent_dim() * sizeof(dense_t<T>));
    const double attn_flops = path == AttentionPath::absorbed
                                  ? 2.0 * h * s * static_cast<double>(n) * (576 + 512)
                                  : 2.0 * s * 512 * h * 256 + 2.0 * h * s * static_cast<double>(n) * (192 + 128);
    const double bytes = weight_bytes + cache_bytes;
    const double flops = 2.0 * static_cast<double>(n) * weight_params + attn_flops;
    bench::run_timed(state, bytes, flops, [&] {
        ws.reset();
        bench::BenchStep<T> step(ctx, rotary, cache, seq, n);
        mla.forward(ctx, ws, step.step, cache, 0, x.cview(), y.view());
        cache.truncate(seq, context);
        benchmark::DoNotOptimize(y.data());
    }, cold);
}

// {path (0 absorbed, 1 naive), cached context, new tokens, cold}
void shapes(benchmark::internal::Benchmark* b) {
    for (int path : {0, 1}) {
        b->Args({path, 0, 512, 0});  // prefill
        for (std::int64_t s : {128, 1024, 4096, 32768}) b->Args({path, s, 1, 0});  // decode
        if (path == 0)
            for (std::int64_t s : {4096, 32768}) b->Args({path, s, 1, 1});  // decode, cold
    }
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK(BM_mla<float>)->Apply(shapes);
BENCHMARK(BM_mla<bf16>)->Apply(shapes);
BENCHMARK(BM_mla<q8>)->Apply(shapes);

// The decode kernel alone, V2-Lite's 16 heads over the latent cache: a bf16
// cache through exact f32 FMAs or through bf16 dot products (AVX512_BF16
// CPUs; elsewhere the f32 path again), against an int8 cache (mla_decode_q8,
// VNNI on AVX-512 VNNI CPUs). Bytes are the cache rows read; flop_roofline is
// the FLOP rate over the f32 FMA peak measured in the same run (the bf16-dot
// and int8 kernels can pass 1: their products are not FMAs).
void BM_mla_decode_kernel(benchmark::State& state) {
    const bool int8 = state.range(0) == 2, cold = state.range(2) != 0;
    const std::int64_t context = state.range(1), heads = 16, rank = 512, w = 576, page = 64;
    const std::int64_t blocks = (context + page - 1) / page;
    Ctx ctx;
    ctx.bf16_cache_products = state.range(0) == 1 ? Bf16CacheProducts::bf16_dot : Bf16CacheProducts::exact;
    const auto f = LatentQ8Format::make(rank, w - rank);
    Tensor<float, cpu, 2> rows({blocks * page, w});
    bench::fill(rows);
    Tensor<bf16, cpu, 3> pages_bf16({int8 ? 0 : blocks, page, w});
    Tensor<std::uint8_t, cpu, 3> pages_q8({int8 ? blocks : 0, page, f.row_bytes()});
    for (std::int64_t r = 0; r < blocks * page; ++r) {
        if (int8) quantize_latent_row(f, rows.data() + r * w, pages_q8.data() + r * f.row_bytes());
        else
            for (std::int64_t c = 0; c < w; ++c) pages_bf16.data()[r * w + c] = bf16(rows.data()[r * w + c]);
    }
    std::vector<std::int32_t> table(static_cast<std::size_t>(blocks));
    std::iota(table.begin(), table.end(), 0);
    Tensor<float, cpu, 3> q({1, heads, w}), out({1, heads, rank});
    bench::fill(q);
    const View<const std::int32_t, cpu, 2> tables(table.data(), {1, blocks});
    const double bytes = static_cast<double>(context) * static_cast<double>(int8 ? f.row_bytes() : 2 * w);
    const double flops = 2.0 * static_cast<double>(heads * context * (w + rank));
    const double seconds = bench::run_timed(state, bytes, flops, [&] {
        if (int8) mla_decode_q8(ctx, q.cview(), pages_q8.cview(), tables, {context}, 0.07, out.view());
        else mla_decode(ctx, q.cview(), pages_bf16.cview(), tables, {context}, 0.07, out.view());
        benchmark::DoNotOptimize(out.data());
    }, cold);
#if defined(__x86_64__) && defined(__GNUC__)
    const double peak = bench::peak_flops(false);
    if (seconds > 0) state.counters["flop_roofline"] = flops * static_cast<double>(state.iterations()) / seconds / peak;
    state.counters["peak_GFLOPs"] = peak / 1e9;
#endif
}
// {cache (0 bf16 exact, 1 bf16 dot products, 2 int8), context, cold}
BENCHMARK(BM_mla_decode_kernel)
    ->ArgsProduct({{0, 1, 2}, {128, 1024, 4096, 32768}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
