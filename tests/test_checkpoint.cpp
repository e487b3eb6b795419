// Checkpoints stored as BF16 and F16 on disk (tests/data/tiny_v2_{bf16,f16}):
// the reference computed their logits in float64 from the rounded weights,
// so any dtype that holds those values exactly (f64, f32, and the matching
// 16-bit type) must reproduce them to that dtype's arithmetic, and greedy
// continuations must agree.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

using namespace dsv2;
using namespace dsv2::test;

namespace {

template <class T>
void check_prefill_and_greedy(const std::string& case_name) {
    CpuCtx ctx(2);
    const Case c(case_name);
    const auto model = load_model<T, cpu>(ctx, c.dir);
    const auto lens = c.seq_lens();
    const auto tokens = c.tokens();

    auto session = model.new_session(ctx, 256, 4, 8);
    std::vector<SequenceTokens> batch;
    std::size_t offset = 0;
    for (auto len : lens) {
        batch.push_back({session.cache.add_sequence(), std::span(tokens).subspan(offset, static_cast<std::size_t>(len))});
        offset += static_cast<std::size_t>(len);
    }
    const auto logits = model.forward(ctx, session, batch, Logits::all);
    compare_view<T>("logits", logits, c, "logits");

    // Greedy continuation of each prompt, all sequences decoding together.
    const auto expected = c.i64("greedy.ids");
    const std::int64_t steps = c.shape("greedy.ids")[1];
    auto s2 = model.new_session(ctx, 256, 4, 8);
    const auto prompts = c.prompts();
    GenerateOptions opt;
    opt.max_new_tokens = steps;
    const auto result = generate(ctx, model, s2, prompts, opt);
    for (std::size_t b = 0; b < prompts.size(); ++b) {
        INFO("sequence " << b);
        for (std::int64_t j = 0; j < steps; ++j) CHECK(result.tokens[b][static_cast<std::size_t>(j)] == expected[b * steps + j]);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("a BF16 checkpoint loads exactly and reproduces the reference", "[checkpoint]", double, float, bf16) {
    check_prefill_and_greedy<TestType>("tiny_v2_bf16");
}

TEMPLATE_TEST_CASE("an F16 checkpoint loads exactly and reproduces the reference", "[checkpoint]", double, float, f16) {
    check_prefill_and_greedy<TestType>("tiny_v2_f16");
}

TEST_CASE("on-disk dtypes are reported in the safetensors header", "[checkpoint]") {
    CHECK(SafetensorsFile(data_dir() / "tiny_v2_bf16" / "model.safetensors").find("lm_head.weight")->dtype == StDType::BF16);
    CHECK(SafetensorsFile(data_dir() / "tiny_v2_f16" / "model.safetensors").find("lm_head.weight")->dtype == StDType::F16);
    CHECK(SafetensorsFile(data_dir() / "tiny_v2" / "model.safetensors").find("lm_head.weight")->dtype == StDType::F32);
}
