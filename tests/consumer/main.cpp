// Proves find_package(dsv2) works: a prefill of the tiny preset, then the
// absorbed and naive attention paths must agree.
#include <dsv2/dsv2.hpp>

#include <cmath>
#include <cstdio>

int main() {
    dsv2::Context<dsv2::cpu> ctx(1);
    dsv2::Model<double, dsv2::cpu> model(ctx, dsv2::Config::tiny());
    dsv2::init_random(ctx, model, 3);
    const std::int32_t prompt[] = {5, 6, 7, 8};
    double first[2];
    for (int path = 0; path < 2; ++path) {
        model.set_attention_path(path == 0 ? dsv2::AttentionPath::absorbed : dsv2::AttentionPath::naive);
        auto session = model.new_session(ctx, 64);
        const dsv2::SequenceTokens seq{session.cache.add_sequence(), prompt};
        first[path] = model.forward(ctx, session, std::span(&seq, 1), dsv2::Logits::last)(0, 0);
    }
    std::printf("consumer: logit[0] absorbed %.12f naive %.12f\n", first[0], first[1]);
    return std::isfinite(first[0]) && std::abs(first[0] - first[1]) < 1e-9 ? 0 : 1;
}
