// A user-defined routing policy, plugged into the library's MoE layer
// without editing any dsv2 header. The policy only has to provide
// experts_per_token() and a per-token route(...) (layers/router.hpp).
//
// This one is "hash routing" (Roller et al., 2021): expert choice depends on
// the token's row of logits only through a fixed hash, and every chosen
// expert gets weight 1/K — a common baseline when studying learned routers.
#include <dsv2/dsv2.hpp>

#include <fmt/format.h>

struct HashRouting {
    int top_k = 2;
    int experts_per_token() const { return top_k; }

    template <class A>
    void route(const A* logits, const A* /*bias*/, int n, A* scores, std::int32_t* idx, A* w) const {
        dsv2::routing::softmax(logits, n, scores);  // still report scores for balance statistics
        // Hash the sign pattern of the first logits into a starting expert.
        unsigned h = 2166136261u;
        for (int i = 0; i < std::min(n, 16); ++i) h = (h ^ (logits[i] > 0 ? 1u : 0u)) * 16777619u;
        for (int j = 0; j < top_k; ++j) {
            idx[j] = static_cast<std::int32_t>((h + static_cast<unsigned>(j)) % static_cast<unsigned>(n));
            w[j] = A(1) / static_cast<A>(top_k);
        }
    }
};
static_assert(dsv2::RouterPolicy<HashRouting>);

int main() try {
    dsv2::Context<dsv2::cpu> ctx;
    const dsv2::Config cfg = dsv2::Config::tiny();
    dsv2::MoE<float, dsv2::cpu, HashRouting> moe(cfg, HashRouting{2});
    dsv2::init_random(ctx, moe, 7);

    constexpr std::int64_t n = 64;
    dsv2::Tensor<float, dsv2::cpu, 2> x({n, cfg.hidden_size}), y({n, cfg.hidden_size});
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)));
    dsv2::Workspace<dsv2::cpu> ws;
    dsv2::RoutingRecord record;
    moe.forward(ctx, ws, x.cview(), y.view(), &record);

    const auto stats = dsv2::balance_statistics(record, cfg.n_group, cfg.topk_group);
    fmt::print("hash routing over {} tokens, {} experts, K = {}\n", n, cfg.n_routed_experts, 2);
    fmt::print("  tokens per expert: [{}]\n", fmt::join(stats.counts, ", "));
    fmt::print("  expert balance loss {:.4f}, device {:.4f}, communication {:.4f} (alpha = 1)\n", stats.expert_loss,
               stats.device_loss, stats.comm_loss);
    fmt::print("  y[0, 0:4] = [{:.4f}, {:.4f}, {:.4f}, {:.4f}]\n", y.view()(0, 0), y.view()(0, 1), y.view()(0, 2),
               y.view()(0, 3));
    return 0;
} catch (const std::exception& e) {
    fmt::print(stderr, "custom_router: {}\n", e.what());
    return 1;
}
