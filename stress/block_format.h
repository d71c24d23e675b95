// Self-describing data blocks for kaio's stress driver: every block a writer puts on disk starts with a
// header naming where it belongs (file, block), who wrote it (writer, sequence) and a checksum of the
// payload, and the payload itself is a pure function of those fields. A reader can therefore verify
// every byte it gets back without any other record, and a torn, misplaced, stale or foreign block is
// detected and described.
//
// Threading: everything here is a pure function of its arguments; safe from any thread.
#ifndef KAIO_STRESS_BLOCK_FORMAT_H_
#define KAIO_STRESS_BLOCK_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace kaio::stress {

inline constexpr size_t kBlockSize = 4096;
inline constexpr uint64_t kBlockMagic = 0x6b61696f426c6b31ull;  // "kaioBlk1"
// The writer id of the blocks the driver lays down before the run starts.
inline constexpr uint32_t kPrefillWriter = 0;

struct BlockHeader {
  uint64_t magic;
  uint32_t file;
  uint32_t block;
  uint32_t writer;
  uint32_t reserved;
  uint64_t sequence;
  uint64_t payload_checksum;  // Fnv1a over the payload
  uint64_t header_checksum;   // Fnv1a over the fields above
};
static_assert(sizeof(BlockHeader) == 48);

inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline uint64_t Fnv1a(const uint8_t* data, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 0x100000001b3ull;
  return h;
}

// What a block should hold: which version of which block.
struct BlockVersion {
  uint32_t writer = kPrefillWriter;
  uint64_t sequence = 0;
  friend bool operator==(const BlockVersion& a, const BlockVersion& b) {
    return a.writer == b.writer && a.sequence == b.sequence;
  }
};

inline void FillPayload(uint8_t* payload, size_t size, uint64_t run_seed, uint32_t file, uint32_t block,
                        const BlockVersion& v) {
  uint64_t state = run_seed ^ (uint64_t{file} << 48) ^ (uint64_t{block} << 24) ^ (uint64_t{v.writer} << 56) ^
                   (v.sequence * 0x2545f4914f6cdd1dull);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t word = SplitMix64(state);
    std::memcpy(payload + i, &word, 8);
  }
  if (i < size) {
    uint64_t word = SplitMix64(state);
    std::memcpy(payload + i, &word, size - i);
  }
}

// Writes a whole block (kBlockSize bytes at `out`).
inline void FormatBlock(uint8_t* out, uint64_t run_seed, uint32_t file, uint32_t block, const BlockVersion& v) {
  uint8_t* payload = out + sizeof(BlockHeader);
  const size_t payload_size = kBlockSize - sizeof(BlockHeader);
  FillPayload(payload, payload_size, run_seed, file, block, v);
  BlockHeader h{};
  h.magic = kBlockMagic;
  h.file = file;
  h.block = block;
  h.writer = v.writer;
  h.sequence = v.sequence;
  h.payload_checksum = Fnv1a(payload, payload_size);
  h.header_checksum = Fnv1a(reinterpret_cast<const uint8_t*>(&h), offsetof(BlockHeader, header_checksum));
  std::memcpy(out, &h, sizeof(h));
}

// Checks a whole block read from (file, block). On success returns true and sets *found to the version it
// holds; on failure returns false and describes what is wrong in *why (first bad byte, wrong place...).
// `scratch` must hold kBlockSize bytes.
inline bool VerifyBlock(const uint8_t* in, uint64_t run_seed, uint32_t file, uint32_t block, BlockVersion* found,
                        std::string* why, uint8_t* scratch) {
  BlockHeader h;
  std::memcpy(&h, in, sizeof(h));
  char text[256];
  if (h.magic != kBlockMagic) {
    std::snprintf(text, sizeof(text), "bad magic %016llx (torn, unwritten or zeroed block)",
                  static_cast<unsigned long long>(h.magic));
    *why = text;
    return false;
  }
  if (h.header_checksum != Fnv1a(in, offsetof(BlockHeader, header_checksum))) {
    *why = "header checksum mismatch";
    return false;
  }
  if (h.file != file || h.block != block) {
    std::snprintf(text, sizeof(text), "misplaced block: header says file %u block %u", h.file, h.block);
    *why = text;
    return false;
  }
  const size_t payload_size = kBlockSize - sizeof(BlockHeader);
  const bool checksum_ok = h.payload_checksum == Fnv1a(in + sizeof(BlockHeader), payload_size);
  BlockVersion v{h.writer, h.sequence};
  FillPayload(scratch, payload_size, run_seed, file, block, v);
  const uint8_t* payload = in + sizeof(BlockHeader);
  if (std::memcmp(scratch, payload, payload_size) != 0) {
    size_t i = 0;
    while (scratch[i] == payload[i]) ++i;
    std::snprintf(text, sizeof(text), "payload byte %zu is %02x, expected %02x (writer %u seq %llu)",
                  i + sizeof(BlockHeader), payload[i], scratch[i], h.writer,
                  static_cast<unsigned long long>(h.sequence));
    *why = text;
    return false;
  }
  if (!checksum_ok) {
    *why = "payload checksum mismatch";
    return false;
  }
  *found = v;
  return true;
}

}  // namespace kaio::stress

#endif  // KAIO_STRESS_BLOCK_FORMAT_H_
