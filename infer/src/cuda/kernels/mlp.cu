// Whole-network kernel for small multilayer perceptrons. Each block takes a tile of rows:
// it copies every layer's weights and biases into shared memory once, stages the tile's
// input rows there with coalesced loads, and then runs the tile through every layer with the
// block's threads spread over (row, output) pairs, each thread computing whole dot products.
// Activations stay in shared memory (two buffers, one read and one written per layer), never
// in global memory; the output transform (sigmoid or softmax) is fused in, and only the
// outputs are written back, coalesced.
//
// A thread's serial work per layer is ceil(tile * outputs / threads) dot products of length
// inputs, so a single row costs one dot product per layer, not the whole network: the kernel
// is short for small batches and fills the device for large ones.
//
// params: for each layer, W (in x out, row-major) then b (out), packed; param_count floats.
// dims:   layers + 1 widths (dims[0] = input features); every width <= MAX_WIDTH.
// acts:   per layer: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 softmax.
// tile:   rows per block.
//
// Launch: 1-D blocks of any size, grid ceil(rows / tile), dynamic shared memory
// (param_count + 2 * tile * (W + 1)) floats, W the widest of dims.
//
// Bank conflicts: consecutive threads take consecutive outputs of one row (weights read
// from consecutive addresses, the row's activation broadcast), or, in a layer with fewer
// outputs than a warp, different rows, whose activations sit an odd stride (W + 1) apart.

#define MAX_WIDTH 128

__device__ __forceinline__ float act(float v, int a) {
    switch (a) {
        case 1: return v > 0.0f ? v : 0.0f;
        case 2: return tanhf(v);
        case 3: return 1.0f / (1.0f + expf(-v));
        default: return v;
    }
}

extern "C" __global__ void mlp_forward(
    const float* __restrict__ params, int param_count,
    const int* __restrict__ dims, const int* __restrict__ acts, int layers,
    const float* __restrict__ x, float* __restrict__ y, int rows, int tile)
{
    extern __shared__ float shared[];
    int width = 0;
    for (int l = 0; l <= layers; ++l) width = max(width, dims[l]);
    const int stride = width + 1;
    float* p = shared;
    float* a = shared + param_count;
    float* z = a + tile * stride;

    for (int i = threadIdx.x; i < param_count; i += blockDim.x) p[i] = params[i];
    const int first = blockIdx.x * tile;
    const int n = min(tile, rows - first);
    int in_dim = dims[0];
    const float* src = x + (size_t)first * in_dim;
    for (int i = threadIdx.x; i < n * in_dim; i += blockDim.x) {
        const int r = i / in_dim;
        a[r * stride + (i - r * in_dim)] = src[i];
    }
    __syncthreads();

    int offset = 0;
    for (int l = 0; l < layers; ++l) {
        const int out_dim = dims[l + 1];
        const int code = acts[l];
        const float* w = p + offset;
        const float* b = w + in_dim * out_dim;
        for (int k = threadIdx.x; k < n * out_dim; k += blockDim.x) {
            const int r = k / out_dim;
            const int o = k - r * out_dim;
            const float* in = a + r * stride;
            float acc = 0.0f;
            for (int i = 0; i < in_dim; ++i) acc = fmaf(in[i], w[i * out_dim + o], acc);
            const float v = acc + b[o];
            z[r * stride + o] = code == 4 ? v : act(v, code);
        }
        __syncthreads();
        if (code == 4) {
            for (int r = threadIdx.x; r < n; r += blockDim.x) {
                float* row = z + r * stride;
                float m = row[0];
                for (int o = 1; o < out_dim; ++o) m = fmaxf(m, row[o]);
                float sum = 0.0f;
                for (int o = 0; o < out_dim; ++o) { row[o] = expf(row[o] - m); sum += row[o]; }
                const float inv = 1.0f / sum;
                for (int o = 0; o < out_dim; ++o) row[o] *= inv;
            }
            __syncthreads();
        }
        float* t = a; a = z; z = t;
        offset += in_dim * out_dim + out_dim;
        in_dim = out_dim;
    }
    float* dst = y + (size_t)first * in_dim;
    for (int i = threadIdx.x; i < n * in_dim; i += blockDim.x) {
        const int r = i / in_dim;
        dst[i] = a[r * stride + (i - r * in_dim)];
    }
}
