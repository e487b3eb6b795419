// The latent KV cache that makes MLA cheap: per token and layer it holds only
// [c_kv | k_pe] — kv_lora_rank + qk_rope_head_dim values (576 for
// DeepSeek-V2), stored in T. Memory is a pool of fixed-size pages shared by
// all sequences; each sequence owns a block table (page ids, in order), the
// same ids in every layer. Appending past the end of a page takes a free
// page; truncating or freeing a sequence returns its pages.
//
// LatentFormat::int8 stores the rows in 8 bits instead (core/latent_q8.hpp:
// 656 bytes per token and layer for V2 instead of 1152 in bf16), on the CPU
// only; its pages are q8_layer(l), of LatentQ8Format::row_bytes() bytes per
// row. It trades accuracy for memory and decode speed at long contexts
// (docs/benchmarks.md, "int8 latent cache").
//
// Every mutating call either succeeds or leaves the cache as it was.
#pragma once

#include "dsv2/core/latent_q8.hpp"
#include "dsv2/layers/common.hpp"

#include <limits>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

namespace dsv2 {

// How a latent cache stores its rows: in its element type, in 8 bits, or
// `automatic`, which a model resolves by its weights (resolve_latent_format).
enum class LatentFormat { dense, int8, automatic };

inline LatentFormat parse_latent_format(std::string_view name) {
    if (name == "dense") return LatentFormat::dense;
    if (name == "int8") return LatentFormat::int8;
    if (name == "auto") return LatentFormat::automatic;
    DSV2_FAIL(Unsupported, "latent cache format '{}': expected auto, dense or int8", name);
}

inline const char* latent_format_name(LatentFormat f) {
    switch (f) {
        case LatentFormat::dense: return "dense";
        case LatentFormat::int8: return "int8";
        case LatentFormat::automatic: return "auto";
    }
    return "?";
}

// `automatic` for an MLA model whose weights are T on backend B. Int8 weights
// on the CPU get int8 rows: the weights' own rounding costs about 3 to 12
// times the int8 cache's logit error on the fixture models, the rows take 656
// bytes per token and layer instead of 1152, and decode at 4K context came
// within 10% of an empty one (median of alternated runs), where exact f32
// products over bf16 rows cost 21-26% on the Xeon (docs/usage.md,
// docs/benchmarks.md). Every other model keeps its cache in its float type,
// as vLLM's and llama.cpp's defaults do: a float model is chosen for
// accuracy, and quantizing its cache is the caller's call.
template <class T, class B>
constexpr LatentFormat resolve_latent_format(LatentFormat f) {
    if (f != LatentFormat::automatic) return f;
    return std::is_same_v<T, q8> && std::is_same_v<B, cpu> ? LatentFormat::int8 : LatentFormat::dense;
}

template <class T, class B>
class LatentCache {
public:
    using SeqId = std::int64_t;

    LatentCache() = default;
    // `n_pages` pages of `page_size` tokens; block tables sized for up to
    // `max_sequences` sequences of at most n_pages * page_size tokens each.
    // With `int8`, the rows are stored in that format (its width() lanes).
    LatentCache(Context<B>& ctx, std::int64_t n_layers, std::int64_t width, std::int64_t page_size,
                std::int64_t n_pages, std::int64_t max_sequences, std::optional<LatentQ8Format> int8 = std::nullopt)
        : ctx_(&ctx), layers_(n_layers), width_(width), page_size_(page_size), n_pages_(n_pages), q8_(int8) {
        DSV2_CHECK(n_layers > 0 && width > 0 && page_size > 0 && n_pages > 0 && max_sequences > 0, RangeError,
                   "[cache] layers {}, width {}, page size {}, pages {}, sequences {}: all must be positive", n_layers,
                   width, page_size, n_pages, max_sequences);
        // Block tables hold page ids as int32 (as the CUDA kernels read them).
        DSV2_CHECK(n_pages <= std::numeric_limits<std::int32_t>::max(), RangeError,
                   "[cache] {} pages: page ids are int32, so at most {} pages", n_pages,
                   std::numeric_limits<std::int32_t>::max());
        if (q8_) {
            DSV2_CHECK((std::is_same_v<B, cpu>), Unsupported,
                       "[cache] the int8 latent cache is CPU-only: the CUDA backend has no kernels for it");
            DSV2_CHECK(q8_->width() == width, ShapeError, "[cache] int8 rows of {} + {} lanes for a cache of width {}",
                       q8_->rank, q8_->rope, width);
            q8_pages_ = Tensor<std::uint8_t, B, 4>({n_layers, n_pages, page_size, q8_->row_bytes()});
        } else {
            pages_ = Tensor<T, B, 4>({n_layers, n_pages, page_size, width});
        }
        block_tables_ = Tensor<std::int32_t, B, 2>({max_sequences, n_pages});
        seqs_.resize(static_cast<std::size_t>(max_sequences));
        free_pages_.reserve(static_cast<std::size_t>(n_pages));
        for (std::int64_t p = n_pages - 1; p >= 0; --p) free_pages_.push_back(static_cast<std::int32_t>(p));
    }

    // A cache that holds `max_tokens` tokens in total, split in any way over
    // up to `max_sequences` sequences. Each sequence's last page may be
    // partly filled, so that costs up to one extra page per sequence beyond
    // the first: ceil(T / page) + min(S, T) - 1 pages always suffice.
    static LatentCache for_config(Context<B>& ctx, const Config& cfg, std::int64_t max_tokens,
                                  std::int64_t max_sequences = 16, std::int64_t page_size = 64,
                                  LatentFormat format = LatentFormat::dense) {
        DSV2_CHECK(format != LatentFormat::automatic, Unsupported,
                   "[cache] LatentFormat::automatic depends on the model's weights: resolve it with "
                   "resolve_latent_format<T, B>() (Model::new_session does)");
        DSV2_CHECK(max_tokens >= 0 && max_tokens <= (std::int64_t{1} << 40) && page_size > 0, RangeError,
                   "[cache] max_tokens {}, page size {}: invalid (max_tokens must be 0..2^40, page size positive)",
                   max_tokens, page_size);
        const std::int64_t slack = std::max<std::int64_t>(0, std::min(max_sequences, max_tokens) - 1);
        // Written so that no sum can overflow for any max_tokens.
        const std::int64_t pages =
            std::max<std::int64_t>(1, max_tokens / page_size + (max_tokens % page_size != 0) + slack);
        std::optional<LatentQ8Format> int8;
        if (format == LatentFormat::int8) int8 = LatentQ8Format::make(cfg.kv_lora_rank, cfg.qk_rope_head_dim);
        return LatentCache(ctx, cfg.num_hidden_layers, cfg.latent_dim(), page_size, pages, max_sequences, int8);
    }

    // ---- sequences -------------------------------------------------------
    SeqId add_sequence() {
        for (std::size_t s = 0; s < seqs_.size(); ++s) {
            if (!seqs_[s].active) {
                seqs_[s] = Sequence{};
                seqs_[s].active = true;
                return static_cast<SeqId>(s);
            }
        }
        DSV2_FAIL(RangeError, "[cache] all {} sequence slots are in use", seqs_.size());
    }

    // Reserves `n` more positions for `seq`; returns the first new position.
    std::int64_t append(SeqId seq, std::int64_t n) {
        Sequence& s = sequence(seq, "append");
        DSV2_CHECK(n >= 0, RangeError, "[cache] append to sequence {}: negative token count {}", seq, n);
        const std::int64_t need = pages_for(s.length + n) - static_cast<std::int64_t>(s.pages.size());
        DSV2_CHECK(need <= static_cast<std::int64_t>(free_pages_.size()), RangeError,
                   "[cache] append {} tokens to sequence {} (length {}): needs {} more pages of {} tokens, {} free of {}",
                   n, seq, s.length, need, page_size_, free_pages_.size(), n_pages_);
        for (std::int64_t i = 0; i < need; ++i) {
            s.pages.push_back(free_pages_.back());
            free_pages_.pop_back();
        }
        if (need > 0) upload_block_table(seq);
        const std::int64_t first = s.length;
        s.length += n;
        return first;
    }

    // Keeps the first `length` positions of `seq`.
    void truncate(SeqId seq, std::int64_t length) {
        Sequence& s = sequence(seq, "truncate");
        DSV2_CHECK(length >= 0 && length <= s.length, RangeError,
                   "[cache] truncate sequence {} to {}: expected 0..{}", seq, length, s.length);
        const auto keep = static_cast<std::size_t>(pages_for(length));
        while (s.pages.size() > keep) {
            free_pages_.push_back(s.pages.back());
            s.pages.pop_back();
        }
        s.length = length;
    }

    void free(SeqId seq) {
        truncate(seq, 0);
        seqs_[static_cast<std::size_t>(seq)].active = false;
    }

    std::int64_t length(SeqId seq) const { return sequence(seq, "length").length; }
    bool active(SeqId seq) const {
        return seq >= 0 && seq < static_cast<SeqId>(seqs_.size()) && seqs_[static_cast<std::size_t>(seq)].active;
    }

    // Flat slot (page * page_size + offset) of position `pos` of `seq`.
    std::int64_t slot(SeqId seq, std::int64_t pos) const {
        const Sequence& s = sequence(seq, "slot");
        DSV2_CHECK(pos >= 0 && pos < s.length, RangeError, "[cache] sequence {}: position {} outside 0..{}", seq, pos,
                   s.length - 1);
        return static_cast<std::int64_t>(s.pages[static_cast<std::size_t>(pos / page_size_)]) * page_size_ +
               pos % page_size_;
    }

    // ---- storage views ---------------------------------------------------
    View<T, B, 3> layer(std::int64_t l) {  // (P, page_size, W); a dense cache's
        assert(l >= 0 && l < layers_ && !q8_);
        return pages_.view()[l];
    }
    View<const T, B, 3> layer(std::int64_t l) const {
        assert(l >= 0 && l < layers_ && !q8_);
        return pages_.view()[l];
    }
    // An int8 cache's: (P, page_size, row bytes).
    bool int8() const { return q8_.has_value(); }
    LatentFormat format() const { return q8_ ? LatentFormat::int8 : LatentFormat::dense; }
    const LatentQ8Format& int8_format() const {
        DSV2_CHECK(q8_.has_value(), Unsupported, "[cache] int8_format(): this cache stores dense rows");
        return *q8_;
    }
    View<std::uint8_t, B, 3> q8_layer(std::int64_t l) {
        assert(l >= 0 && l < layers_ && q8_);
        return q8_pages_.view()[l];
    }
    View<const std::uint8_t, B, 3> q8_layer(std::int64_t l) const {
        assert(l >= 0 && l < layers_ && q8_);
        return q8_pages_.view()[l];
    }
    View<const std::int32_t, B, 1> block_table(SeqId seq) const {  // (pages of seq), device memory
        const Sequence& s = sequence(seq, "block_table");
        return block_tables_.view()[seq].cols(0, static_cast<std::int64_t>(s.pages.size()));
    }
    const std::vector<std::int32_t>& host_block_table(SeqId seq) const { return sequence(seq, "block_table").pages; }

    // ---- accounting ------------------------------------------------------
    std::int64_t n_layers() const { return layers_; }
    std::int64_t width() const { return width_; }
    std::int64_t page_size() const { return page_size_; }
    std::int64_t n_pages() const { return n_pages_; }
    std::int64_t free_page_count() const { return static_cast<std::int64_t>(free_pages_.size()); }
    std::int64_t max_sequences() const { return static_cast<std::int64_t>(seqs_.size()); }
    // Bytes one token occupies across all layers: layers * (C + Dr) * sizeof(T),
    // or layers * the int8 row's bytes.
    std::int64_t bytes_per_token() const {
        return layers_ * (q8_ ? q8_->row_bytes() : width_ * static_cast<std::int64_t>(sizeof(T)));
    }
    std::int64_t capacity_tokens() const { return n_pages_ * page_size_; }
    std::int64_t capacity_bytes() const { return static_cast<std::int64_t>(pages_.bytes() + q8_pages_.bytes()); }
    // Bytes of the pages currently held by sequences (whole pages).
    std::int64_t bytes_in_use() const { return (n_pages_ - free_page_count()) * page_size_ * bytes_per_token(); }

private:
    struct Sequence {
        bool active = false;
        std::int64_t length = 0;
        std::vector<std::int32_t> pages;
    };

    std::int64_t pages_for(std::int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }

    Sequence& sequence(SeqId seq, const char* op) {
        return const_cast<Sequence&>(static_cast<const LatentCache*>(this)->sequence(seq, op));
    }
    const Sequence& sequence(SeqId seq, const char* op) const {
        DSV2_CHECK(active(seq), RangeError, "[cache] {}: sequence {} is not active (slots 0..{})", op, seq,
                   seqs_.size() - 1);
        return seqs_[static_cast<std::size_t>(seq)];
    }

    void upload_block_table(SeqId seq) {
        const auto& pages = seqs_[static_cast<std::size_t>(seq)].pages;
        copy_to_device(*ctx_, pages.data(), block_tables_.view()[seq].data, static_cast<std::int64_t>(pages.size()));
    }

    Context<B>* ctx_ = nullptr;
    std::int64_t layers_ = 0, width_ = 0, page_size_ = 0, n_pages_ = 0;
    std::optional<LatentQ8Format> q8_;
    Tensor<T, B, 4> pages_;                  // (L, P, page_size, W), dense
    Tensor<std::uint8_t, B, 4> q8_pages_;    // (L, P, page_size, row bytes), int8
    Tensor<std::int32_t, B, 2> block_tables_;  // (max_sequences, P)
    std::vector<Sequence> seqs_;
    std::vector<std::int32_t> free_pages_;
};

}  // namespace dsv2
