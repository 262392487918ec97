// Runs the CUDA kernels (their .cu source, included after the emulation header) on launch
// requests read from stdin, writing the results to stdout. Little-endian binary, per request:
//   i32 op; then
//   op 1 dense_forward: i32 rows, in, out, act, grid.x, grid.y, block.x, block.y;
//                       f32 x[rows*in], w[in*out], b[out]        -> f32 y[rows*out]
//   op 2 softmax_rows:  i32 rows, cols, grid.x, block.x; f32 y[rows*cols] -> f32 y[rows*cols]
//   op 3 mlp_forward:   i32 param_count, layers, rows, grid.x, block.x, shared_bytes, tile;
//                       f32 params[param_count]; i32 dims[layers+1], acts[layers];
//                       f32 x[rows*dims[0]]                       -> f32 y[rows*dims[layers]]
#include "cuda_emu.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "dense.cpp"
#include "mlp.cpp"

static bool read_exact(void* out, size_t bytes) { return fread(out, 1, bytes, stdin) == bytes; }

static int32_t i32() {
    int32_t v;
    if (!read_exact(&v, sizeof v)) { fprintf(stderr, "truncated request\n"); exit(2); }
    return v;
}

template <typename T>
static std::vector<T> array(size_t n) {
    std::vector<T> v(n);
    if (n && !read_exact(v.data(), n * sizeof(T))) { fprintf(stderr, "truncated array\n"); exit(2); }
    return v;
}

static void write(const std::vector<float>& v) { fwrite(v.data(), sizeof(float), v.size(), stdout); }

int main() {
    int32_t op;
    while (read_exact(&op, sizeof op)) {
        if (op == 1) {
            const int rows = i32(), in = i32(), out = i32(), act = i32();
            const dim3 grid{(unsigned)i32(), (unsigned)i32()}, block{(unsigned)i32(), (unsigned)i32()};
            auto x = array<float>(size_t(rows) * in), w = array<float>(size_t(in) * out), b = array<float>(out);
            std::vector<float> y(size_t(rows) * out);
            emu_launch(grid, block, 0, [&] { dense_forward(x.data(), w.data(), b.data(), y.data(), rows, in, out, act); });
            write(y);
        } else if (op == 2) {
            const int rows = i32(), cols = i32();
            const dim3 grid{(unsigned)i32()}, block{(unsigned)i32()};
            auto y = array<float>(size_t(rows) * cols);
            emu_launch(grid, block, 0, [&] { softmax_rows(y.data(), rows, cols); });
            write(y);
        } else if (op == 3) {
            const int param_count = i32(), layers = i32(), rows = i32();
            const dim3 grid{(unsigned)i32()}, block{(unsigned)i32()};
            const size_t shared_bytes = size_t(i32());
            const int tile = i32();
            auto params = array<float>(param_count);
            auto dims = array<int32_t>(layers + 1), acts = array<int32_t>(layers);
            auto x = array<float>(size_t(rows) * dims[0]);
            std::vector<float> y(size_t(rows) * dims[layers]);
            emu_launch(grid, block, shared_bytes, [&] {
                mlp_forward(params.data(), param_count, dims.data(), acts.data(), layers, x.data(), y.data(), rows, tile);
            });
            write(y);
        } else {
            fprintf(stderr, "unknown op %d\n", op);
            return 2;
        }
    }
    return 0;
}
