// GPU benchmarks of the parity runner (`test_cuda_parity --bench`), for
// scripts/gpu-check.sh: the device's copy bandwidth measured in the same
// run, a cuBLAS bf16 GEMM as the tensor-core ceiling, MLA decode over a bf16
// latent cache at context 4K with 128 and 16 heads (achieved GB/s and
// TFLOP/s, fractions of both), and DeepSeek-V2 MoE layer time at
// 1, 64 and 512 tokens. Timed with cudaEvents after warm-up runs.
#pragma once

#include <dsv2/cuda.cuh>

#include <cstdio>
#include <functional>
#include <numeric>
#include <random>

namespace dsv2::gpu_test {

// Deterministic pseudo-random fill on the device (uniform, given std dev):
// host-side init of a 7.5 GB MoE would take minutes.
template <class T>
__global__ void fill_kernel(T* p, std::int64_t n, std::uint64_t seed, float stddev, float mean) {
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        std::uint64_t z = seed + static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f) * 2.f - 1.f;  // [-1, 1)
        cuda_detail::store(p + i, mean + u * stddev * 1.7320508f);
    }
}
template <class T>
void fill(Context<cuda>& g, T* p, std::int64_t n, std::uint64_t seed, double stddev, double mean = 0.0) {
    if (n == 0) return;
    fill_kernel<<<1024, 256, 0, g.stream>>>(p, n, seed, static_cast<float>(stddev), static_cast<float>(mean));
    DSV2_CUDA_LAUNCHED();
}

// Milliseconds per call of f, best of `reps` after `warmup` calls.
inline double time_ms(Context<cuda>& g, const std::function<void()>& f, int warmup = 2, int reps = 10) {
    for (int i = 0; i < warmup; ++i) f();
    cudaEvent_t a, b;
    DSV2_CUDA_CHECK(cudaEventCreate(&a));
    DSV2_CUDA_CHECK(cudaEventCreate(&b));
    float best = 1e30f;
    for (int i = 0; i < reps; ++i) {
        DSV2_CUDA_CHECK(cudaEventRecord(a, g.stream));
        f();
        DSV2_CUDA_CHECK(cudaEventRecord(b, g.stream));
        DSV2_CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        best = std::min(best, ms);
    }
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
    return best;
}

inline int run_benchmarks() {
    Context<cuda> g;
    cudaDeviceProp prop{};
    DSV2_CUDA_CHECK(cudaGetDeviceProperties(&prop, g.device));
    std::printf("GPU benchmarks on %s\n", prop.name);
    constexpr double nominal_peak = 4.8e12;  // H200 HBM3e, bytes/s

    // ---- bandwidth probe: device-to-device copy, read + write counted ----
    double probe = 0;
    {
        const std::int64_t bytes = std::int64_t{2} << 30;
        Tensor<std::uint8_t, cuda, 1> a({bytes}), b({bytes});
        DSV2_CUDA_CHECK(cudaMemsetAsync(a.data(), 1, bytes, g.stream));
        const double ms = time_ms(g, [&] {
            DSV2_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, g.stream));
        });
        probe = 2.0 * static_cast<double>(bytes) / (ms * 1e-3);
        std::printf("BENCH bandwidth_probe  %.0f GB/s (device memcpy, read+write; nominal peak %.0f GB/s)\n",
                    probe / 1e9, nominal_peak / 1e9);
    }

    // ---- tensor-core probe: an 8192³ bf16 GEMM through cuBLAS, f32 sums --
    double flop_peak = 0;
    {
        const int n = 8192;
        Tensor<bf16, cuda, 2> a({n, n}), b({n, n});
        Tensor<float, cuda, 2> c({n, n});
        fill(g, a.data(), a.numel(), 3, 1.0);
        fill(g, b.data(), b.numel(), 4, 1.0);
        const float one = 1.f, zero = 0.f;
        const double ms = time_ms(g, [&] {
            DSV2_CUBLAS_CHECK(cublasGemmEx(g.blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.data(), CUDA_R_16BF, n,
                                           b.data(), CUDA_R_16BF, n, &zero, c.data(), CUDA_R_32F, n,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        });
        flop_peak = 2.0 * n * static_cast<double>(n) * n / (ms * 1e-3);
        std::printf("BENCH tensor_probe  %.0f TFLOP/s (cuBLAS bf16 GEMM 8192^3, f32 accumulate)\n", flop_peak / 1e12);
    }

    // ---- MLA decode, DeepSeek-V2 shapes, bf16 cache: 128 heads (the whole
    //      model on one GPU; compute-bound: 242 FLOP per cached byte) and 16
    //      heads (one GPU of eight with heads split, as in FlashMLA's
    //      benchmark; memory-bound) --------------------------------------
    for (auto [batch, heads] : {std::array<std::int64_t, 2>{64, 128}, {128, 16}}) {
        const std::int64_t ctx_len = 4096, rank = 512, rope = 64, w = rank + rope, page = 64;
        const std::int64_t pages_per_seq = ctx_len / page, n_pages = batch * pages_per_seq;
        Tensor<bf16, cuda, 3> pages({n_pages, page, w});
        fill(g, pages.data(), pages.numel(), 1, 1.0);
        std::vector<std::int32_t> ids(static_cast<std::size_t>(n_pages));
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), std::mt19937_64(5));
        Tensor<std::int32_t, cuda, 2> tables({batch, pages_per_seq});
        copy_to_device(g, ids.data(), tables.data(), n_pages);
        Tensor<float, cuda, 3> q({batch, heads, w});
        fill(g, q.data(), q.numel(), 2, 1.0);
        Tensor<float, cuda, 3> out({batch, heads, rank});
        const double scale = 0.1147214;
        const double cache_bytes = static_cast<double>(batch * ctx_len * w) * sizeof(bf16);
        const double flops = 2.0 * static_cast<double>(batch * heads * ctx_len) * static_cast<double>(w + rank);
        if (heads == 128) {
            // The general path (gather each sequence's rows, then attention), for scale.
            Tensor<float, cuda, 2> rows({ctx_len, w});
            const double ms = time_ms(g, [&] {
                for (std::int64_t b = 0; b < batch; ++b) {
                    cache_gather(g, pages.cview(), tables.cview()[b], rows.view());
                    const View<const float, cuda, 3> keys(rows.data(), {ctx_len, 1, w});
                    const View<const float, cuda, 3> values(rows.data(), {ctx_len, 1, rank}, {w, w, 1});
                    attention(g, q.cview().rows(b, b + 1), keys, values, ctx_len - 1, scale, out.view().rows(b, b + 1));
                }
            }, 1, 3);
            std::printf("BENCH mla_decode gather+attention  batch %lld heads %lld ctx %lld: %.3f ms, %.0f GB/s of "
                        "latent cache\n",
                        static_cast<long long>(batch), static_cast<long long>(heads), static_cast<long long>(ctx_len),
                        ms, cache_bytes / (ms * 1e-3) / 1e9);
        }
        // The paged decode kernel (mla_decode.cuh), reading the cache in place.
        const std::vector<std::int64_t> lens(static_cast<std::size_t>(batch), ctx_len);
        const double ms = time_ms(g, [&] { mla_decode(g, q.cview(), pages.cview(), tables.cview(), lens, scale, out.view()); }, 3, 20);
        const double bw = cache_bytes / (ms * 1e-3), fl = flops / (ms * 1e-3);
        std::printf("BENCH mla_decode kernel  batch %lld heads %lld ctx %lld: %.3f ms, %.0f GB/s of latent cache "
                    "(%.1f%% of probe, %.1f%% of nominal peak), %.0f TFLOP/s (%.1f%% of tensor probe)\n",
                    static_cast<long long>(batch), static_cast<long long>(heads), static_cast<long long>(ctx_len), ms,
                    bw / 1e9, 100 * bw / probe, 100 * bw / nominal_peak, fl / 1e12, 100 * fl / flop_peak);
    }

    // ---- a decode-sized product: DeepSeek-V2's LM head (102400 x 5120
    //      bf16, 1 GB) on one token, gemv.cuh ------------------------------
    {
        const std::int64_t vocab = 102400, d = 5120;
        Tensor<bf16, cuda, 2> w({vocab, d});
        fill(g, w.data(), w.numel(), 7, 0.02);
        Tensor<float, cuda, 2> x({1, d}), y({1, vocab});
        fill(g, x.data(), x.numel(), 8, 1.0);
        const double ms = time_ms(g, [&] { linear(g, x.cview(), w.cview(), y.view()); }, 3, 20);
        const double bytes = static_cast<double>(vocab * d) * sizeof(bf16);
        std::printf("BENCH linear decode  LM head 102400x5120 bf16, 1 token: %.3f ms, %.0f GB/s of weights "
                    "(%.1f%% of probe)\n",
                    ms, bytes / (ms * 1e-3) / 1e9, 100 * bytes / (ms * 1e-3) / probe);
    }

    // ---- MoE layer of DeepSeek-V2 (bf16 weights) ------------------------
    {
        const Config cfg = Config::deepseek_v2();
        MoE<bf16, cuda> moe(cfg);
        std::uint64_t seed = 10;
        moe.for_each_weight([&](const std::string&, auto& t) {
            const double fan_in = static_cast<double>(t.shape().size() > 1 ? t.shape()[1] : 1);
            fill(g, t.data(), t.numel(), seed++, 1.0 / std::sqrt(fan_in));
        });
        Workspace<cuda> ws;
        const double expert_bytes = 3.0 * static_cast<double>(cfg.hidden_size * cfg.moe_intermediate_size) * sizeof(bf16);
        for (std::int64_t n : {1, 64, 512}) {
            Tensor<float, cuda, 2> x({n, cfg.hidden_size}), y({n, cfg.hidden_size});
            fill(g, x.data(), x.numel(), 99, 1.0);
            std::vector<std::int64_t> touched;
            const double ms = time_ms(g, [&] {
                ws.reset();
                moe.forward(g, ws, x.cview(), y.view());
            });
            // Weight bytes read at least once: the touched routed experts plus the shared ones.
            const auto& off = ws.host_index();
            std::int64_t used = 0;
            for (std::size_t e = 0; e + 1 < off.size(); ++e) used += off[e + 1] > off[e];
            const double bytes = (static_cast<double>(used) + static_cast<double>(cfg.n_shared_experts)) * expert_bytes;
            std::printf("BENCH moe_layer  DeepSeek-V2 bf16, %lld tokens: %.3f ms (%lld experts active, %.0f GB/s of "
                        "expert weights, %.1f%% of probe)\n",
                        static_cast<long long>(n), ms, static_cast<long long>(used), bytes / (ms * 1e-3) / 1e9,
                        100 * bytes / (ms * 1e-3) / probe);
        }
    }
    return 0;
}

}  // namespace dsv2::gpu_test
