// Whole-network kernel for small multilayer perceptrons. Each block copies every layer's
// weights and biases into shared memory once, stages its tile of input rows there with
// coalesced loads, then each thread runs one row through every layer in registers and local
// memory without returning to global memory; the output transform (sigmoid or softmax) is
// fused in, and only the outputs are written back.
//
// params: for each layer, W (in x out, row-major) then b (out), packed; param_count floats.
// dims:   layers + 1 widths (dims[0] = input features); every width <= MAX_WIDTH.
// acts:   per layer: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 softmax.
//
// Launch: 1-D blocks of B threads, grid ceil(rows / B), dynamic shared memory
// (param_count + B * (dims[0] + 1)) floats.

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
    const float* __restrict__ x, float* __restrict__ y, int rows)
{
    extern __shared__ float shared[];
    float* p = shared;
    const int in0 = dims[0];
    const int stride = in0 + 1;  // odd stride: a warp's row reads hit distinct banks
    float* xs = shared + param_count;

    for (int i = threadIdx.x; i < param_count; i += blockDim.x) p[i] = params[i];
    const int first = blockIdx.x * blockDim.x;
    const int n = min((int)blockDim.x, rows - first);
    const float* tile = x + (size_t)first * in0;
    for (int i = threadIdx.x; i < n * in0; i += blockDim.x) {
        const int r = i / in0;
        xs[r * stride + (i - r * in0)] = tile[i];
    }
    __syncthreads();
    if ((int)threadIdx.x >= n) return;

    float a[MAX_WIDTH];
    float z[MAX_WIDTH];
    int in_dim = in0;
    for (int i = 0; i < in_dim; ++i) a[i] = xs[threadIdx.x * stride + i];

    int offset = 0;
    for (int l = 0; l < layers; ++l) {
        const int out_dim = dims[l + 1];
        const float* w = p + offset;
        const float* b = w + in_dim * out_dim;
        for (int o = 0; o < out_dim; ++o) {
            float acc = 0.0f;
            for (int i = 0; i < in_dim; ++i) acc = fmaf(a[i], w[i * out_dim + o], acc);
            z[o] = acc + b[o];
        }
        if (acts[l] == 4) {
            float m = z[0];
            for (int o = 1; o < out_dim; ++o) m = fmaxf(m, z[o]);
            float sum = 0.0f;
            for (int o = 0; o < out_dim; ++o) { z[o] = expf(z[o] - m); sum += z[o]; }
            const float inv = 1.0f / sum;
            for (int o = 0; o < out_dim; ++o) a[o] = z[o] * inv;
        } else {
            for (int o = 0; o < out_dim; ++o) a[o] = act(z[o], acts[l]);
        }
        offset += in_dim * out_dim + out_dim;
        in_dim = out_dim;
    }
    float* out = y + (size_t)(first + threadIdx.x) * in_dim;
    for (int o = 0; o < in_dim; ++o) out[o] = a[o];
}
