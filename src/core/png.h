// A minimal PNG encoder: 8-bit RGB, no interlace, every scanline with filter 0 (none), one zlib-compressed IDAT
// chunk (PNG specification, ISO/IEC 15948). Enough for the heat maps of `ttt eval --task niah`.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt {

// The PNG file's bytes for a width x height image; `rgb` holds 3 bytes per pixel, rows top to bottom.
std::string encode_png_rgb(int64_t width, int64_t height, const std::vector<uint8_t>& rgb);

}  // namespace ttt
