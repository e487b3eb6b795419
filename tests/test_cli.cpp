// The `dsv2` command as a user runs it: `logits` on a checkpoint written by
// the reference must match the reference's logits (f32: max abs error within
// 1e-4 of the largest logit), and `generate --tokens` must reproduce the
// reference's greedy ids. Bad arguments exit non-zero with a clear message.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "temp_dir.hpp"

#include <array>
#include <cstdio>
#include <sstream>

using namespace dsv2;
using namespace dsv2::test;

namespace {

struct Run {
    int status = -1;
    std::string output;  // stdout and stderr together
};

Run run(const std::string& args) {
    const std::string cmd = std::string(DSV2_CLI_PATH) + " " + args + " 2>&1";
    Run r;
    FILE* pipe = ::popen(cmd.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::array<char, 4096> buf{};
    std::size_t n = 0;
    while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
    const int st = ::pclose(pipe);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    INFO("command: " << cmd << "\noutput:\n" << r.output);
    return r;
}

std::string ids_csv(const std::vector<std::int32_t>& ids) {
    std::ostringstream s;
    for (std::size_t i = 0; i < ids.size(); ++i) s << (i ? "," : "") << ids[i];
    return s.str();
}

// The first prompt of a case (sequences are independent, so its logits are
// the first rows of the batch's golden logits).
std::vector<std::int32_t> first_prompt(const Case& c) {
    const auto tokens = c.tokens();
    return {tokens.begin(), tokens.begin() + c.seq_lens()[0]};
}

}  // namespace

TEST_CASE("dsv2 logits matches the reference's logits", "[cli]") {
    const TempDir tmp;
    for (const std::string name : {"tiny_v2", "tiny_lite", "tiny_plain", "tiny_v2_bf16"}) {
        const Case c(name);
        const auto prompt = first_prompt(c);
        const auto out = tmp.path() / (name + ".npy");
        const Run r = run("logits --model " + c.dir.string() + " --tokens " + ids_csv(prompt) + " --out " + out.string() +
                          " --dtype f32 --threads 2");
        REQUIRE(r.status == 0);
        const auto got = read_npy(out);
        CHECK(got.descr == "<f4");
        REQUIRE(got.shape == std::vector<std::int64_t>{std::ssize(prompt), c.config.vocab_size});
        const auto actual = got.as<double>();
        const auto expected = c.f64("logits");
        double largest = 0, worst = 0;
        for (std::size_t i = 0; i < actual.size(); ++i) {
            largest = std::max(largest, std::abs(expected[i]));
            worst = std::max(worst, std::abs(actual[i] - expected[i]));
        }
        INFO(name << ": max abs error " << worst << ", largest logit " << largest);
        CHECK(worst <= 1e-4 * largest);
    }
}

TEST_CASE("dsv2 generate --tokens reproduces the reference's greedy ids", "[cli]") {
    for (const std::string name : {"tiny_v2", "tiny_lite", "tiny_plain"}) {
        const Case c(name);
        const auto expected = c.i64("greedy.ids");
        const std::int64_t steps = c.shape("greedy.ids")[1];
        const Run r = run("generate --model " + c.dir.string() + " --tokens " + ids_csv(first_prompt(c)) +
                          " --max-new-tokens " + std::to_string(steps));
        REQUIRE(r.status == 0);
        std::vector<std::int32_t> want(expected.begin(), expected.begin() + steps);
        INFO(r.output);
        CHECK(r.output.find("ids: " + ids_csv(want) + "\n") != std::string::npos);
        CHECK(r.output.find("decode") != std::string::npos);  // the speed summary
    }
}

namespace {

// `dsv2 logits <flags>` on the case's first prompt, then `dsv2 generate
// <flags>` on it: the output must name `says` and the logits must be close
// to the reference (within `bound` of the largest) but not equal to it
// (above `floor` of it), so the flags reached a rounding model.
void check_rounded_run(const Case& c, const std::string& flags, const std::string& says, double bound,
                       double floor) {
    const TempDir tmp;
    const auto prompt = first_prompt(c);
    const auto out = tmp.path() / "logits.npy";
    const Run r = run("logits --model " + c.dir.string() + " --tokens " + ids_csv(prompt) + " --out " + out.string() +
                      " " + flags + " --threads 2");
    REQUIRE(r.status == 0);
    CHECK_THAT(r.output, Catch::Contains(says));
    const auto actual = read_npy(out).as<double>();
    const auto expected = c.f64("logits");
    double largest = 0, worst = 0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
        largest = std::max(largest, std::abs(expected[i]));
        worst = std::max(worst, std::abs(actual[i] - expected[i]));
    }
    INFO("max abs error " << worst << ", largest logit " << largest);
    CHECK(worst <= bound * largest);
    CHECK(worst > floor * largest);
    const Run g = run("generate --model " + c.dir.string() + " --tokens " + ids_csv(prompt) + " --max-new-tokens 3 " +
                      flags + " --threads 2");
    REQUIRE(g.status == 0);
    CHECK_THAT(g.output, Catch::Contains("ids: "));
}

}  // namespace

TEST_CASE("dsv2 logits and generate run with --dtype int8", "[cli][int8]") {
    // Accuracy is tests/test_int8.cpp's; here: the flag reaches the int8 model.
    // --cache dense: the weights' rounding alone (auto would add an int8 cache).
    check_rounded_run(Case("tiny_lite"), "--dtype int8 --cache dense", "dtype int8, dense cache", 0.06, 1e-6);
}

TEST_CASE("dsv2 picks the latent cache by the weights unless --cache says", "[cli][latent_q8]") {
    // The tiny preset's 3 layers per token: 96 bytes a layer in bf16, 68 in
    // int8 (32 int8 lanes, one f32 scale, 16 bf16 rope lanes).
    struct Want {
        std::string flags, cache;
        int bytes;
    };
    const Want wants[] = {
        {"--dtype int8", "int8", 204},
        {"--dtype int8 --cache dense", "dense", 288},
        {"--dtype bf16", "dense", 288},
        {"--dtype bf16 --cache int8", "int8", 204},
    };
    for (const auto& w : wants) {
        const Run b = run("bench --preset tiny " + w.flags + " --prompt 4 --gen 2 --reps 1 --threads 2 --json");
        INFO(w.flags << "\n" << b.output);
        REQUIRE(b.status == 0);
        CHECK_THAT(b.output, Catch::Contains("\"cache\": \"" + w.cache + "\"") &&
                                 Catch::Contains("\"kv_cache_bytes_per_token\": " + std::to_string(w.bytes) + ","));
    }
    const Run g = run("generate --model " + (data_dir() / "tiny_v2").string() + " --tokens 1,2 --max-new-tokens 1 " +
                      "--dtype int8 --threads 2");
    REQUIRE(g.status == 0);
    CHECK_THAT(g.output, Catch::Contains("int8 cache"));
}

TEST_CASE("dsv2 logits, generate and bench run with --cache int8", "[cli][latent_q8]") {
    // Accuracy is tests/test_latent_q8.cpp's; here: the flag reaches an int8
    // latent cache.
    check_rounded_run(Case("tiny_v2"), "--cache int8", "int8 cache", 0.1, 1e-5);
    // The tiny preset: 3 layers of 32 int8 lanes, one f32 scale and 16 bf16
    // rope lanes (68 bytes; 96 in bf16).
    const Run b = run("bench --preset tiny --cache int8 --prompt 8 --gen 4 --depth 20 --reps 1 --threads 2 --json");
    REQUIRE(b.status == 0);
    CHECK_THAT(b.output, Catch::Contains("\"cache\": \"int8\"") && Catch::Contains("\"kv_cache_bytes_per_token\": 204,"));
}

TEST_CASE("dsv2 bench decodes several depths in turns and prints a JSON line for each", "[cli]") {
    const Run b = run("bench --preset tiny --prompt 4 --gen 3 --depth 0,24 --reps 1 --threads 2 --json");
    INFO(b.output);
    REQUIRE(b.status == 0);
    std::vector<std::string> lines;
    std::istringstream in(b.output);
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("{")) lines.push_back(line);
    REQUIRE(lines.size() == 2);
    // The tiny preset's 288 bytes per token: the depth-24 rows read 24 + 3/2
    // tokens of context on average, the depth-0 ones 3/2.
    CHECK_THAT(lines[0], Catch::Contains("\"depth\": 0,") && Catch::Contains("\"decode_cache_bytes_per_token\": 432,") &&
                             Catch::Contains("\"depths_in_turn\": 2"));
    CHECK_THAT(lines[1], Catch::Contains("\"depth\": 24,") && Catch::Contains("\"decode_cache_bytes_per_token\": 7344,"));
}

TEST_CASE("dsv2 bench names its decode attention and --exact-attention keeps it exact", "[cli]") {
    // The tiny preset's bf16 rows (rank 32 + rope 16) fit the bf16 dot-product
    // kernel, which decode takes where the CPU makes it pay.
    const dsv2::Context<cpu> ctx(2);
    const std::string fastest = dsv2::mla_decode_arithmetic<bf16>(ctx, false, 48, 32);
    const std::string args = "bench --preset tiny --dtype bf16 --prompt 4 --gen 2 --reps 1 --threads 2 --json";
    const Run b = run(args);
    REQUIRE(b.status == 0);
    CHECK_THAT(b.output, Catch::Contains("\"attention\": \"" + fastest + "\""));
    const Run e = run(args + " --exact-attention");
    REQUIRE(e.status == 0);
    CHECK_THAT(e.output, Catch::Contains("\"attention\": \"exact f32 products\""));
    const Run t = run("bench --preset tiny --dtype bf16 --prompt 4 --gen 2 --reps 1 --threads 2 --exact-attention");
    REQUIRE(t.status == 0);
    CHECK_THAT(t.output, Catch::Contains("attention  exact f32 products (decode)"));
    const Run g = run("generate --model " + (data_dir() / "tiny_v2").string() +
                      " --tokens 1,2 --max-new-tokens 2 --dtype bf16 --exact-attention --threads 2");
    CHECK(g.status == 0);
}

TEST_CASE("dsv2 info summarises the config", "[cli]") {
    const Run r = run("info --model " + (data_dir() / "tiny_v2").string());
    REQUIRE(r.status == 0);
    CHECK_THAT(r.output, Catch::Contains("MLA (20 + 8)"));
    CHECK_THAT(r.output, Catch::Contains("group_limited_greedy"));
}

TEST_CASE("dsv2 reports bad input clearly and exits non-zero", "[cli]") {
    const std::string model = " --model " + (data_dir() / "tiny_v2").string();
    const TempDir tmp;
    const std::string out = " --out " + (tmp.path() / "x.npy").string();
    struct Bad {
        std::string args, message;
    };
    const Bad cases[] = {
        {"logits" + model + " --tokens 1,2,97" + out, "outside the vocabulary"},
        {"logits" + model + " --tokens 1,x" + out, "'x' is not a token id"},
        {"logits --model /nonexistent --tokens 1" + out, "/nonexistent/config.json"},
        {"logits" + model + " --tokens 1 --dtype f8" + out, "--dtype f8"},
        {"logits" + model + " --tokens 1 --backend tpu" + out, "--backend tpu"},
        {"logits" + model + " --tokens 1 --backend cuda --dtype int8" + out, "int8 weights run on the cpu backend only"},
        {"generate" + model + " --tokens 1 --backend cuda --dtype int8", "int8 weights run on the cpu backend only"},
        {"generate" + model + " --tokens 1 --backend cuda --cache int8", "int8 latent cache runs on the cpu backend"},
        {"generate" + model + " --tokens 1 --cache fp8", "--cache"},
        {"generate" + model + " --prompt hello", "tokenizer is not supported"},
        {"generate" + model + " --tokens 1 --top-p 0", "top_p"},
        {"bench --preset tiny --backend tpu", "--backend"},
        {"bench --preset tiny --depth 0,-4", "--depth 0,-4: expected one or more depths >= 0"},
        {"bench --preset tiny --backend cuda --dtype int8", "int8 weights and the int8 latent cache run on the cpu"},
    };
    for (const auto& b : cases) {
        const Run r = run(b.args);
        INFO(b.args << "\n" << r.output);
        CHECK(r.status != 0);
        CHECK_THAT(r.output, Catch::Contains(b.message));
    }
}
