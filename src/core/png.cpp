#include "core/png.h"

#include <zlib.h>

#include "core/error.h"

namespace ttt {

namespace {

void put_u32_be(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(char((v >> shift) & 0xff));
}

// A chunk: length, type, data, CRC-32 of type and data.
void put_chunk(std::string& out, const char type[4], const std::string& data) {
  put_u32_be(out, uint32_t(data.size()));
  const std::string typed = std::string(type, 4) + data;
  out += typed;
  put_u32_be(out, uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(typed.data()), uInt(typed.size()))));
}

}  // namespace

std::string encode_png_rgb(int64_t width, int64_t height, const std::vector<uint8_t>& rgb) {
  // PNG dimensions are at most 2^31 - 1; keep images small enough that one zlib call compresses them.
  TTT_CHECK(width >= 1 && height >= 1 && width <= 16384 && height <= 16384,
            "PNG: image of " << width << " x " << height << " pixels (1 .. 16384 each allowed)");
  TTT_CHECK(int64_t(rgb.size()) == width * height * 3,
            "PNG: " << rgb.size() << " bytes of pixels for " << width << " x " << height << " RGB");
  std::string raw;  // each scanline: filter byte 0, then the row's RGB bytes
  raw.reserve(size_t(height * (1 + width * 3)));
  for (int64_t y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.append(reinterpret_cast<const char*>(rgb.data() + y * width * 3), size_t(width * 3));
  }
  uLongf packed_size = compressBound(uLong(raw.size()));
  std::string packed(packed_size, '\0');
  TTT_CHECK(compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size, reinterpret_cast<const Bytef*>(raw.data()),
                      uLong(raw.size()), Z_BEST_COMPRESSION) == Z_OK,
            "PNG: zlib compression failed");
  packed.resize(packed_size);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put_u32_be(ihdr, uint32_t(width));
  put_u32_be(ihdr, uint32_t(height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", packed);
  put_chunk(png, "IEND", "");
  return png;
}

}  // namespace ttt
