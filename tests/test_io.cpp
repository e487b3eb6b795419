// File formats: .npy, safetensors, and Hugging Face checkpoint loading
// (single file and sharded). Malformed inputs are built byte by byte here, so
// each validation message is checked against the exact defect it names.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "temp_dir.hpp"

#include <cmath>
#include <cstring>
#include <limits>

using Catch::Contains;
using dsv2::CheckpointError;
using dsv2::StDType;
using dsv2::test::Case;
using dsv2::test::CpuCtx;
using dsv2::test::TempDir;
using json = nlohmann::json;

namespace {

// ---- raw byte builders --------------------------------------------------

template <class V>
std::vector<char> raw_bytes(const std::vector<V>& v) {
    std::vector<char> out(v.size() * sizeof(V));
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

// An .npy file: magic, version, little-endian header length, header, data.
std::string npy_raw(const std::string& header, std::size_t data_bytes, int version = 1) {
    std::string out("\x93NUMPY", 6);
    out += static_cast<char>(version);
    out += '\0';
    const std::size_t len = header.size();
    const int len_bytes = version == 1 ? 2 : 4;
    for (int i = 0; i < len_bytes; ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
    out += header;
    out.append(data_bytes, '\0');
    return out;
}

// A safetensors file: u64 header length, JSON header, `data_bytes` of zeros.
std::string st_raw(const std::string& header, std::size_t data_bytes, std::uint64_t claimed_len = 0) {
    const std::uint64_t len = claimed_len ? claimed_len : header.size();
    std::string out(8, '\0');
    std::memcpy(out.data(), &len, 8);
    out += header;
    out.append(data_bytes, '\0');
    return out;
}

// Opening `raw` as a safetensors file throws a CheckpointError containing every needle.
void require_st_error(const TempDir& dir, const std::string& raw, std::initializer_list<const char*> needles) {
    const auto path = dir.write("bad.safetensors", raw);
    REQUIRE_THROWS_AS(dsv2::SafetensorsFile(path), CheckpointError);
    for (const char* n : needles) REQUIRE_THROWS_WITH(dsv2::SafetensorsFile(path), Contains(n));
}

// ---- checkpoint builders ------------------------------------------------

// The tensors of a fixture checkpoint, as entries ready to be rewritten.
std::vector<dsv2::StWriteEntry> fixture_entries(const Case& c) {
    const dsv2::SafetensorsFile f(c.dir / "model.safetensors");
    std::vector<dsv2::StWriteEntry> out;
    for (const auto& [name, t] : f.tensors()) {
        const auto b = f.bytes(t);
        out.push_back({name, t.dtype, t.shape, std::vector<char>(b.begin(), b.end())});
    }
    return out;
}

dsv2::StWriteEntry& entry(std::vector<dsv2::StWriteEntry>& entries, const std::string& name) {
    const auto it = std::find_if(entries.begin(), entries.end(), [&](const auto& e) { return e.name == name; });
    INFO("tensor " << name);
    REQUIRE(it != entries.end());
    return *it;
}

// A checkpoint directory: the case's config.json plus the given tensors in one file.
void write_checkpoint(const TempDir& dir, const Case& c, std::vector<dsv2::StWriteEntry> entries) {
    std::filesystem::copy_file(c.dir / "config.json", dir / "config.json",
                               std::filesystem::copy_options::overwrite_existing);
    dsv2::write_safetensors(dir / "model.safetensors", std::move(entries));
}

// Runs the case's prompts through `model` and returns all logits, flattened.
std::vector<double> prompt_logits(CpuCtx& ctx, const dsv2::Model<float, dsv2::cpu>& model, const Case& c) {
    const auto tokens = c.tokens();
    const auto lens = c.seq_lens();
    auto session = model.new_session(ctx, std::ssize(tokens), std::ssize(lens));
    std::vector<dsv2::SequenceTokens> batch;
    std::size_t offset = 0;
    for (auto len : lens) {
        batch.push_back({session.cache.add_sequence(),
                         std::span<const std::int32_t>(tokens.data() + offset, static_cast<std::size_t>(len))});
        offset += static_cast<std::size_t>(len);
    }
    return dsv2::test::to_f64(model.forward(ctx, session, batch, dsv2::Logits::all));
}

std::uint32_t f32_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

}  // namespace

// ==== .npy ===================================================================

TEMPLATE_TEST_CASE("npy write then read gives back dtype, shape and values", "[io][npy]", double, float, std::int64_t) {
    const TempDir dir("dsv2-npy");
    for (const std::vector<std::int64_t>& shape : std::vector<std::vector<std::int64_t>>{{7}, {2, 3, 4}, {1}, {3, 1, 5}, {0}}) {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        std::vector<TestType> values(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i)
            values[static_cast<std::size_t>(i)] = static_cast<TestType>((i % 2 ? -1 : 1) * (i * 37 + 1)) / TestType(4);
        const auto path = dir / "a.npy";
        dsv2::write_npy<TestType>(path, values, shape);

        // numpy's layout: the header dict, space padded, ends in '\n' at a multiple of 64 bytes.
        std::ifstream in(path, std::ios::binary);
        const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const std::size_t header_len = static_cast<unsigned char>(raw[8]) | (static_cast<unsigned char>(raw[9]) << 8);
        CHECK(raw.compare(0, 6, "\x93NUMPY") == 0);
        CHECK((10 + header_len) % 64 == 0);
        CHECK(raw[10 + header_len - 1] == '\n');
        CHECK(raw.size() == 10 + header_len + values.size() * sizeof(TestType));

        const auto a = dsv2::read_npy(path);
        INFO("shape size " << shape.size());
        CHECK(a.descr == (std::is_same_v<TestType, double> ? "<f8" : std::is_same_v<TestType, float> ? "<f4" : "<i8"));
        CHECK(a.shape == shape);
        CHECK(a.numel() == n);
        CHECK(a.template as<TestType>() == values);
    }
}

TEST_CASE("npy reads files written by numpy: fixture tokens and goldens", "[io][npy]") {
    const Case c("tiny_v2");
    const auto tokens = c.npy("tokens");
    CHECK(tokens.descr == "<i8");
    std::int64_t total = 0;
    for (auto l : c.seq_lens()) total += l;
    CHECK(tokens.shape == std::vector<std::int64_t>{total});
    const auto logits = c.npy("logits");
    CHECK(logits.descr == "<f8");
    CHECK(logits.shape == std::vector<std::int64_t>{total, c.config.vocab_size});
    // Integer arrays convert to floating point and back.
    const auto as_double = tokens.as<double>();
    const auto as_int = tokens.as<std::int64_t>();
    for (std::size_t i = 0; i < as_int.size(); ++i) CHECK(as_double[i] == static_cast<double>(as_int[i]));
}

TEST_CASE("npy accepts format version 2 and scalars", "[io][npy]") {
    const std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n";
    std::string raw = npy_raw(header, 0, 2);
    const double v[2] = {1.25, -3.5};
    raw.append(reinterpret_cast<const char*>(v), sizeof v);
    const auto a = dsv2::parse_npy(raw);
    CHECK(a.shape == std::vector<std::int64_t>{2});
    CHECK(a.as<double>() == std::vector<double>{1.25, -3.5});

    std::string scalar = npy_raw("{'descr': '<i8', 'fortran_order': False, 'shape': (), }\n", 0);
    const std::int64_t s = -42;
    scalar.append(reinterpret_cast<const char*>(&s), sizeof s);
    const auto b = dsv2::parse_npy(scalar);
    CHECK(b.shape.empty());
    CHECK(b.as<std::int64_t>() == std::vector<std::int64_t>{-42});
}

TEST_CASE("npy rejects malformed files with a message naming the defect", "[io][npy][errors]") {
    const std::string ok_header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }\n";
    auto require_npy_error = [](const std::string& raw, std::initializer_list<const char*> needles) {
        REQUIRE_THROWS_AS(dsv2::parse_npy(raw, "x.npy"), CheckpointError);
        for (const char* n : needles) REQUIRE_THROWS_WITH(dsv2::parse_npy(raw, "x.npy"), Contains(n));
    };
    REQUIRE_NOTHROW(dsv2::parse_npy(npy_raw(ok_header, 24)));

    SECTION("bad magic") {
        std::string raw = npy_raw(ok_header, 24);
        raw[1] = 'M';
        require_npy_error(raw, {"x.npy", "bad magic"});
        require_npy_error("\x93NUM", {"bad magic"});
    }
    SECTION("unsupported version") { require_npy_error(npy_raw(ok_header, 24, 7), {"format version 7"}); }
    SECTION("header length past the end") {
        std::string raw = npy_raw(ok_header, 0);
        raw.resize(10 + ok_header.size() / 2);
        require_npy_error(raw, {"header length", "runs past the end"});
    }
    SECTION("truncated data") {
        require_npy_error(npy_raw(ok_header, 23), {"expected 24 data bytes", "found 23"});
        require_npy_error(npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5), }\n", 36),
                          {"expected 40 data bytes for shape (2, 5)"});
    }
    SECTION("unsupported dtype") {
        require_npy_error(npy_raw("{'descr': '<c16', 'fortran_order': False, 'shape': (3,), }\n", 48),
                          {"unsupported dtype '<c16'"});
        require_npy_error(npy_raw("{'descr': '>f8', 'fortran_order': False, 'shape': (3,), }\n", 24),
                          {"unsupported dtype '>f8'"});
        // Parsable but not convertible: f16 arrays are read as bytes only.
        const auto half = dsv2::parse_npy(npy_raw("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }\n", 6));
        REQUIRE_THROWS_AS(half.as<double>("half"), CheckpointError);
        REQUIRE_THROWS_WITH(half.as<double>("half"), Contains("half") && Contains("unsupported dtype '<f2'"));
    }
    SECTION("fortran order") {
        require_npy_error(npy_raw("{'descr': '<f8', 'fortran_order': True, 'shape': (3,), }\n", 24), {"Fortran"});
    }
    SECTION("missing or malformed header fields") {
        require_npy_error(npy_raw("{'descr': '<f8', 'fortran_order': False, }\n", 24), {"no 'shape' field"});
        require_npy_error(npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (3x,), }\n", 24),
                          {"malformed shape entry '3x'"});
        require_npy_error(npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (-3,), }\n", 24),
                          {"malformed shape entry '-3'"});
    }
    SECTION("missing file") {
        REQUIRE_THROWS_WITH(dsv2::read_npy("/nonexistent/dir/x.npy"), Contains("x.npy") && Contains("cannot open"));
    }
}

// ==== safetensors ============================================================

TEST_CASE("safetensors write then read converts F32, F16, BF16 and F64 correctly", "[io][safetensors]") {
    const TempDir dir("dsv2-st");
    // Values chosen so that every conversion below has a known exact answer:
    //  F32 0.1f = 0x3dcccccd: bf16 keeps 0x3dcc, dropped 0xcccd > 0x8000 rounds up -> 0x3dcd;
    //   f16 0.1 -> 0x2e66 (0.0999755859375).
    //  F16 0x3555 = 1365/4096 = 0.333251953125 exactly; as float 0x3eaaa000, bf16 rounds up -> 0x3eab.
    //  BF16 0x4049 = 3.140625; in f16: 1.5703125 * 2, mantissa 584 = 0x248 -> 0x4248.
    const std::vector<float> f32 = {0.1f, -2.5f, 0.0f, 65504.0f};
    const std::vector<std::uint16_t> f16_bits = {0x3555, 0xc000, 0x0001, 0x7bff};  // 0.33325, -2, 2^-24, 65504
    const std::vector<std::uint16_t> bf16_bits = {0x4049, 0xbf80, 0x0000, 0x7f7f};  // 3.140625, -1, 0, bf16 max
    const std::vector<double> f64 = {0.1, -1e30, 1.0 / 3.0, 5e-324};
    std::vector<dsv2::StWriteEntry> entries = {
        {"a.f32", StDType::F32, {2, 2}, raw_bytes(f32)},
        {"b.f16", StDType::F16, {4}, raw_bytes(f16_bits)},
        {"c.bf16", StDType::BF16, {1, 4}, raw_bytes(bf16_bits)},
        {"d.f64", StDType::F64, {4, 1}, raw_bytes(f64)},
        {"e.empty", StDType::F32, {0, 3}, {}},
        {"f.ids", StDType::I64, {2}, raw_bytes(std::vector<std::int64_t>{5, -6})},
    };
    dsv2::write_safetensors(dir / "t.safetensors", entries, {{"format", "pt"}, {"note", "hand-made"}});
    const dsv2::SafetensorsFile f(dir / "t.safetensors");
    REQUIRE(f.tensors().size() == 6);
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.metadata().at("note") == "hand-made");
    const auto& a = *f.find("a.f32");
    CHECK(a.dtype == StDType::F32);
    CHECK(a.shape == std::vector<std::int64_t>{2, 2});
    CHECK(f.find("missing") == nullptr);
    // The raw bytes come back untouched.
    for (const auto& e : entries) {
        const auto b = f.bytes(*f.find(e.name));
        CHECK(std::vector<char>(b.begin(), b.end()) == e.bytes);
    }

    auto read = [&]<class V>(const char* name, V) {
        const auto& t = *f.find(name);
        std::vector<V> out(static_cast<std::size_t>(t.numel()));
        f.read(t, out.data());
        return out;
    };
    SECTION("F32 source") {
        CHECK(read("a.f32", float{}) == f32);
        const auto d = read("a.f32", double{});
        for (std::size_t i = 0; i < f32.size(); ++i) CHECK(d[i] == static_cast<double>(f32[i]));
        const auto b = read("a.f32", dsv2::bf16{});
        CHECK(b[0].bits == 0x3dcd);
        CHECK(b[1].bits == 0xc020);
        CHECK(b[2].bits == 0x0000);
        CHECK(b[3].bits == 0x4780);  // 65504 = 0x477fe000: dropped 0xe000 rounds up to 65536
        const auto h = read("a.f32", dsv2::f16{});
        CHECK(h[0].bits == 0x2e66);
        CHECK(h[1].bits == 0xc100);
        CHECK(h[3].bits == 0x7bff);
    }
    SECTION("F16 source") {
        const auto d = read("b.f16", double{});
        CHECK(d == std::vector<double>{1365.0 / 4096.0, -2.0, std::ldexp(1.0, -24), 65504.0});
        const auto fl = read("b.f16", float{});
        CHECK(f32_bits(fl[0]) == 0x3eaaa000u);
        CHECK(read("b.f16", dsv2::f16{})[0].bits == 0x3555);
        CHECK(read("b.f16", dsv2::f16{})[2].bits == 0x0001);
        CHECK(read("b.f16", dsv2::bf16{})[0].bits == 0x3eab);
    }
    SECTION("BF16 source") {
        CHECK(read("c.bf16", double{}) ==
              std::vector<double>{3.140625, -1.0, 0.0, static_cast<double>(std::bit_cast<float>(0x7f7f0000u))});
        CHECK(read("c.bf16", dsv2::bf16{})[3].bits == 0x7f7f);
        const auto h = read("c.bf16", dsv2::f16{});
        CHECK(h[0].bits == 0x4248);
        CHECK(h[1].bits == 0xbc00);
        CHECK(h[3].bits == 0x7c00);  // bf16 max is far above 65504: Inf in f16
    }
    SECTION("F64 source") {
        CHECK(read("d.f64", double{}) == f64);
        const auto fl = read("d.f64", float{});
        CHECK(fl[0] == 0.1f);
        CHECK(fl[1] == -1e30f);
        CHECK(fl[2] == static_cast<float>(1.0 / 3.0));
        CHECK(fl[3] == 0.0f);
        CHECK(read("d.f64", dsv2::bf16{})[0].bits == 0x3dcd);
    }
    SECTION("empty and integer tensors") {
        CHECK(f.find("e.empty")->numel() == 0);
        CHECK(read("e.empty", float{}).empty());
        const auto& ids = *f.find("f.ids");
        std::vector<float> out(2);
        REQUIRE_THROWS_AS(f.read(ids, out.data()), CheckpointError);
        REQUIRE_THROWS_WITH(f.read(ids, out.data()), Contains("f.ids") && Contains("I64") && Contains("not a floating-point"));
    }
}

TEST_CASE("write_safetensors rejects a byte count that does not match the shape", "[io][safetensors][errors]") {
    const TempDir dir("dsv2-st");
    REQUIRE_THROWS_AS(dsv2::write_safetensors(dir / "x.safetensors", {{"w", StDType::F32, {3}, std::vector<char>(8)}}),
                      dsv2::ShapeError);
    REQUIRE_THROWS_WITH(dsv2::write_safetensors(dir / "x.safetensors", {{"w", StDType::F32, {3}, std::vector<char>(8)}}),
                        Contains("w") && Contains("8 bytes"));
}

TEST_CASE("safetensors: each malformed file has its own message", "[io][safetensors][errors]") {
    const TempDir dir("dsv2-st");
    const std::string one = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    REQUIRE_NOTHROW(dsv2::SafetensorsFile(dir.write("ok.safetensors", st_raw(one, 8))));

    SECTION("shorter than 8 bytes") { require_st_error(dir, std::string("\x05\0\0", 3), {"3 bytes", "shorter than the 8-byte"}); }
    SECTION("header length past the end") {
        require_st_error(dir, st_raw(one, 8, 1000), {"header length 1000", "runs past the end"});
        require_st_error(dir, st_raw("", 0, ~std::uint64_t{0}), {"runs past the end"});
    }
    SECTION("malformed JSON header") { require_st_error(dir, st_raw(R"({"w": {"dtype": )", 8), {"malformed JSON header"}); }
    SECTION("header not an object") { require_st_error(dir, st_raw("[1, 2]", 0), {"header is not a JSON object"}); }
    SECTION("entry not an object") { require_st_error(dir, st_raw(R"({"w": 3})", 0), {"w in bad.safetensors", "not an object"}); }
    SECTION("unknown dtype") {
        require_st_error(dir, st_raw(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), {"w", "unknown dtype \"Q4\""});
    }
    SECTION("missing dtype") {
        require_st_error(dir, st_raw(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), {"w in bad.safetensors", "missing dtype"});
    }
    SECTION("missing shape") {
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8), {"w in", "missing shape"});
    }
    SECTION("negative shape entry") {
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                         {"shape entry -2", "non-negative"});
    }
    SECTION("malformed data_offsets") {
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), {"data_offsets must be"});
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","shape":[2]}})", 8), {"data_offsets must be"});
    }
    SECTION("data_offsets out of range") {
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
                         {"w in", "data_offsets [0, 8]", "outside the data section of 4 bytes"});
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), {"outside the data section"});
    }
    SECTION("byte size not matching the shape") {
        require_st_error(dir, st_raw(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 12),
                         {"w in", "expected 12 bytes for F32 of shape [3], found 8"});
        require_st_error(dir, st_raw(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16),
                         {"expected 8 bytes for BF16"});
    }
    SECTION("overlapping tensors") {
        require_st_error(dir,
                         st_raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                12),
                         {"tensors a [0, 8) and b [4, 12) overlap"});
        // An empty tensor in between must not hide the overlap of its neighbours.
        require_st_error(dir,
                         st_raw(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                                R"("c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                                16),
                         {"overlap", "c [12, 16)"});
    }
    SECTION("metadata must hold strings") {
        require_st_error(dir, st_raw(R"({"__metadata__":{"format":3}})", 0), {"__metadata__.format is not a string"});
    }
    SECTION("missing file") {
        REQUIRE_THROWS_AS(dsv2::SafetensorsFile(dir / "nope.safetensors"), CheckpointError);
        REQUIRE_THROWS_WITH(dsv2::SafetensorsFile(dir / "nope.safetensors"), Contains("nope.safetensors") && Contains("cannot open"));
    }
}

// ==== checkpoints ============================================================

TEST_CASE("load_model: a bad checkpoint throws a message naming the tensor", "[io][checkpoint][errors]") {
    CpuCtx ctx(1);
    const Case c("tiny_v2");
    const TempDir dir("dsv2-ckpt");
    auto entries = fixture_entries(c);
    REQUIRE(entries.size() == 89);  // 90 header entries less __metadata__
    auto load = [&] { return dsv2::load_model<float, dsv2::cpu>(ctx, dir.path()); };
    const std::string kv_b = "model.layers.1.self_attn.kv_b_proj.weight";  // (H*(Dn+Dv), C) = (4*22, 20)

    SECTION("the unmodified copy loads") {
        write_checkpoint(dir, c, entries);
        REQUIRE_NOTHROW(load());
    }
    SECTION("missing tensor") {
        std::erase_if(entries, [&](const auto& e) { return e.name == kv_b; });
        write_checkpoint(dir, c, entries);
        REQUIRE_THROWS_AS(load(), CheckpointError);
        REQUIRE_THROWS_WITH(load(), Contains("missing tensor " + kv_b) && Contains("expected shape (88, 20)"));
    }
    SECTION("wrong shape") {
        entry(entries, kv_b).shape = {20, 88};  // same bytes, transposed shape
        write_checkpoint(dir, c, entries);
        REQUIRE_THROWS_WITH(load(), Contains(kv_b) && Contains("model.safetensors") &&
                                        Contains("expected shape (88, 20), found (20, 88)"));
        entry(entries, kv_b).shape = {88 * 20};
        write_checkpoint(dir, c, entries);
        REQUIRE_THROWS_WITH(load(), Contains("expected shape (88, 20), found (1760)"));
    }
    SECTION("integer dtype") {
        auto& e = entry(entries, "model.norm.weight");
        e.dtype = StDType::I32;  // same byte count as F32
        write_checkpoint(dir, c, entries);
        REQUIRE_THROWS_WITH(load(), Contains("model.norm.weight") && Contains("floating-point dtype") && Contains("I32"));
    }
    SECTION("unexpected extra tensor") {
        entries.push_back({"model.layers.0.mlp.experts.0.gate_proj.weight", StDType::F32, {2}, std::vector<char>(8)});
        write_checkpoint(dir, c, entries);
        REQUIRE_THROWS_AS(load(), CheckpointError);
        REQUIRE_THROWS_WITH(load(), Contains("1 unexpected tensor") &&
                                        Contains("model.layers.0.mlp.experts.0.gate_proj.weight") &&
                                        Contains("allow_unexpected"));
        dsv2::LoadOptions opt;
        opt.allow_unexpected = true;
        CHECK_NOTHROW(dsv2::load_model<float, dsv2::cpu>(ctx, dir.path(), opt));
    }
    SECTION("NaN or Inf weight") {
        for (const float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
            auto poisoned = entries;
            auto& e = entry(poisoned, "model.layers.2.mlp.gate.weight");
            std::memcpy(e.bytes.data() + 5 * sizeof(float), &bad, sizeof bad);
            write_checkpoint(dir, c, poisoned);
            REQUIRE_THROWS_AS(load(), CheckpointError);
            REQUIRE_THROWS_WITH(load(), Contains("model.layers.2.mlp.gate.weight") && Contains("element 5") &&
                                            Contains("check_finite"));
            dsv2::LoadOptions opt;
            opt.check_finite = false;
            const auto m = dsv2::load_model<float, dsv2::cpu>(ctx, dir.path(), opt);
            const auto* moe = std::get_if<dsv2::MoE<float, dsv2::cpu>>(&m.layers[2].mlp);
            REQUIRE(moe != nullptr);
            CHECK(f32_bits(moe->gate.weight.data()[5]) == f32_bits(bad));
        }
    }
    SECTION("neither file present") {
        std::filesystem::copy_file(c.dir / "config.json", dir / "config.json");
        REQUIRE_THROWS_WITH(load(), Contains("neither model.safetensors nor model.safetensors.index.json"));
    }
    SECTION("bad config") {
        write_checkpoint(dir, c, entries);
        dir.write("config.json", "{");
        REQUIRE_THROWS_AS(load(), dsv2::ConfigError);
    }
}

TEST_CASE("sharded checkpoint loads and gives the single-file model's logits", "[io][checkpoint]") {
    CpuCtx ctx(1);
    const Case c("tiny_v2");
    const TempDir dir("dsv2-shards");
    std::filesystem::copy_file(c.dir / "config.json", dir / "config.json");
    auto entries = fixture_entries(c);
    // Split alternately so both shards hold parts of every layer.
    std::vector<dsv2::StWriteEntry> shard[2];
    json index;
    index["metadata"] = {{"total_size", 0}};
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const std::string file = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
        index["weight_map"][entries[i].name] = file;
        shard[i % 2].push_back(entries[i]);
    }
    dsv2::write_safetensors(dir / "model-00001-of-00002.safetensors", shard[0]);
    dsv2::write_safetensors(dir / "model-00002-of-00002.safetensors", shard[1]);
    dir.write("model.safetensors.index.json", index.dump(2));

    const dsv2::Checkpoint ckpt(dir.path());
    CHECK(ckpt.names().size() == entries.size());
    const auto* loc = ckpt.find(entries[1].name);
    REQUIRE(loc != nullptr);
    CHECK(loc->file->path().filename() == "model-00002-of-00002.safetensors");

    const auto sharded = dsv2::load_model<float, dsv2::cpu>(ctx, dir.path());
    const auto single = dsv2::load_model<float, dsv2::cpu>(ctx, c.dir);
    const auto a = prompt_logits(ctx, sharded, c);
    const auto b = prompt_logits(ctx, single, c);
    // The same f32 weights through the same code: bit-identical.
    CHECK(a == b);
    dsv2::test::compare("tiny_v2/sharded.logits", "f32", a, c.f64("logits"), c.shape("logits"),
                        dsv2::test::tolerance<float>());
}

TEST_CASE("sharded checkpoint: a bad index is reported", "[io][checkpoint][errors]") {
    CpuCtx ctx(1);
    const Case c("tiny_v2");
    const TempDir dir("dsv2-shards");
    std::filesystem::copy_file(c.dir / "config.json", dir / "config.json");
    auto entries = fixture_entries(c);
    const std::string moved = entries.front().name;
    std::vector<dsv2::StWriteEntry> shard1(entries.begin(), entries.begin() + 10), shard2(entries.begin() + 10, entries.end());
    dsv2::write_safetensors(dir / "s1.safetensors", shard1);
    dsv2::write_safetensors(dir / "s2.safetensors", shard2);
    json index;
    for (std::size_t i = 0; i < entries.size(); ++i) index["weight_map"][entries[i].name] = i < 10 ? "s1.safetensors" : "s2.safetensors";
    auto load = [&] { return dsv2::load_model<float, dsv2::cpu>(ctx, dir.path()); };
    auto write_index = [&](const json& j) { dir.write("model.safetensors.index.json", j.dump()); };

    write_index(index);
    REQUIRE_NOTHROW(load());

    SECTION("shard file missing") {
        json j = index;
        j["weight_map"][moved] = "s3.safetensors";
        write_index(j);
        REQUIRE_THROWS_AS(load(), CheckpointError);
        REQUIRE_THROWS_WITH(load(), Contains("s3.safetensors") && Contains("cannot open"));
    }
    SECTION("tensor not in its listed shard") {
        json j = index;
        j["weight_map"][moved] = "s2.safetensors";
        write_index(j);
        REQUIRE_THROWS_WITH(load(), Contains(moved) && Contains("index lists it in s2.safetensors, which does not contain it"));
    }
    SECTION("tensor missing from the index") {
        json j = index;
        j["weight_map"].erase(moved);
        write_index(j);
        REQUIRE_THROWS_WITH(load(), Contains("missing tensor " + moved));
    }
    SECTION("shard name escaping the directory") {
        json j = index;
        j["weight_map"][moved] = "../s1.safetensors";
        write_index(j);
        REQUIRE_THROWS_WITH(load(), Contains("must be a plain file name"));
    }
    SECTION("malformed index") {
        dir.write("model.safetensors.index.json", "{\"weight_map\": ");
        REQUIRE_THROWS_WITH(load(), Contains("model.safetensors.index.json") && Contains("malformed JSON"));
        write_index(json::array());
        REQUIRE_THROWS_WITH(load(), Contains("missing object 'weight_map'"));
        write_index({{"weight_map", {{moved, 3}}}});
        REQUIRE_THROWS_WITH(load(), Contains("is not a file name"));
    }
}
