// oneDNN's convolution primitives on one shape: results (to check against XLA) or timings.
//
// Issue 29's spike asks whether oneDNN's convolution forward, backward-data and backward-weights
// primitives, called alone, beat XLA:CPU's convolutions on the shapes of bts_jax's train step by
// enough (1.5x) to be worth a jax.ffi extension. This program is the oneDNN side; run.py is the
// driver that builds it, runs XLA on the same inputs and prints the table.
//
//   conv_spike check DTYPE SHAPE OUTDIR     writes y, dx, dw (both variants) as raw arrays
//   conv_spike time DTYPE REPS SHAPE...     one JSON line per shape and direction
//
// DTYPE is f32 or bf16 (every tensor, gradients included, in that type, as XLA runs the model's
// bfloat16 step). SHAPE is "n,h,w,c,o,k,stride,pad,groups". The user layout is the model's: NHWC
// activations and HWIO kernels (grouped: H, W, I/G, G, O/G). Three variants per direction:
//   user: primitive descriptors built on the user layouts, so no reorder exists;
//   wany: activations in NHWC, kernel format_tag::any (oneDNN's kernel layout, reordered from
//         and to HWIO: cheap, and what a jax.ffi call on NHWC arrays would do);
//   any:  format_tag::any everywhere, oneDNN picks its (blocked) layouts; timed alone on buffers
//         already in those layouts, and again with the reorders a NHWC caller pays.
// wany is timed with its reorders; user needs none.
// Inputs come from a counter hash that run.py reproduces bit for bit (input_value), so both sides
// see the same numbers without files.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

struct Shape {
    int64_t n, h, w, c, o, k, s, p, g;
    int64_t oh() const { return (h + 2 * p - k) / s + 1; }
    int64_t ow() const { return (w + 2 * p - k) / s + 1; }
};

Shape parse_shape(const std::string &text) {
    int64_t v[9];
    if (std::sscanf(text.c_str(), "%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld", &v[0], &v[1], &v[2],
                    &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) != 9)
        throw std::runtime_error("bad shape " + text);
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
}

// The i-th input value of stream `seed`, in [-1, 1): 24 hashed bits as k / 2^23 - 1 for float32
// (so that no sum is exact and the check compares roundings), 8 bits as k / 128 - 1 for bfloat16
// (exact in bfloat16). Both are exact in float32, so run.py reproduces them bit for bit.
float input_value(uint32_t seed, uint32_t i, bool bf16) {
    uint32_t h = i * 0x9E3779B1u + seed * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    h *= 0x297A2D39u;
    h ^= h >> 15;
    if (bf16) return static_cast<float>(h >> 24) / 128.0f - 1.0f;
    return static_cast<float>(h >> 8) / 8388608.0f - 1.0f;
}

uint16_t to_bf16(float f) {  // round to nearest even (inputs are exact anyway)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

dnnl::engine &engine() {
    static dnnl::engine e(dnnl::engine::kind::cpu, 0);
    return e;
}

dnnl::stream &stream() {
    static dnnl::stream s(engine());
    return s;
}

enum Variant { USER, WANY, ANY };
const char *VARIANT_NAMES[] = {"user", "wany", "any"};

struct Problem {
    Shape sh;
    dt type;
    dnnl::engine &eng = engine();
    dnnl::stream &strm = stream();
    memory::desc src, wei, dst;  // user layouts
    memory::dims strides, pad_l, pad_r;

    Problem(const Shape &shape, dt t) : sh(shape), type(t) {
        src = memory::desc({sh.n, sh.c, sh.h, sh.w}, t, tag::nhwc);
        dst = memory::desc({sh.n, sh.o, sh.oh(), sh.ow()}, t, tag::nhwc);
        if (sh.g == 1)
            wei = memory::desc({sh.o, sh.c, sh.k, sh.k}, t, tag::hwio);
        else
            wei = memory::desc({sh.g, sh.o / sh.g, sh.c / sh.g, sh.k, sh.k}, t, tag::hwigo);
        strides = {sh.s, sh.s};
        pad_l = {sh.p, sh.p};
        int64_t ph = (sh.oh() - 1) * sh.s + sh.k - sh.h - sh.p;
        int64_t pw = (sh.ow() - 1) * sh.s + sh.k - sh.w - sh.p;
        pad_r = {ph, pw};
    }

    memory::desc any_like(const memory::desc &d) const {
        return memory::desc(d.get_dims(), type, tag::any);
    }
    // The descriptors a variant asks for: user layout, or any (for the kernel only, or all).
    memory::desc act(Variant v, const memory::desc &d) const { return v == ANY ? any_like(d) : d; }
    memory::desc kern(Variant v) const { return v == USER ? wei : any_like(wei); }

    // A user-layout memory holding stream `seed` (element i in logical-offset order of the
    // model's NHWC / HWIO array, which is the physical order of these descriptors).
    memory filled(const memory::desc &d, uint32_t seed) {
        memory m(d, eng);
        size_t count = d.get_size() / memory::data_type_size(type);
        void *ptr = m.map_data();
        for (size_t i = 0; i < count; ++i) {
            float v = input_value(seed, static_cast<uint32_t>(i), type == dt::bf16);
            if (type == dt::f32)
                static_cast<float *>(ptr)[i] = v;
            else
                static_cast<uint16_t *>(ptr)[i] = to_bf16(v);
        }
        m.unmap_data(ptr);
        return m;
    }

    dnnl::convolution_forward::primitive_desc fwd_pd(Variant v) const {
        return {eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                act(v, src), kern(v), act(v, dst), strides, pad_l, pad_r};
    }
};

double now_ms() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

// Median of up to `reps` timed runs after two warmups (JIT, caches, page faults); fewer runs,
// but at least 3, where they would take more than 300 ms.
double median_ms(const std::function<void()> &run, int reps) {
    for (int i = 0; i < 2; ++i) run();
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        double start = now_ms();
        run();
        t.push_back(now_ms() - start);
        if (i == 0) reps = std::max(3, std::min(reps, static_cast<int>(300.0 / t[0])));
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// One direction of one variant: the primitive, its arguments in its own layouts, and the
// reorders a NHWC caller needs around it (inputs: user -> primitive; output: primitive -> user).
struct Run {
    dnnl::primitive prim;
    std::unordered_map<int, memory> args;
    std::vector<std::pair<dnnl::primitive, std::unordered_map<int, memory>>> before, after;
    memory out_user;
    std::string impl;

    void bind_input(Problem &pb, int arg, const memory &user, const memory::desc &want) {
        if (want == user.get_desc()) {
            args[arg] = user;
            return;
        }
        memory m(want, pb.eng);
        before.push_back({dnnl::reorder(user, m), {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, m}}});
        args[arg] = m;
    }
    void bind_output(Problem &pb, int arg, const memory::desc &user, const memory::desc &want) {
        out_user = memory(user, pb.eng);
        if (want == user) {
            args[arg] = out_user;
            return;
        }
        memory m(want, pb.eng);
        after.push_back({dnnl::reorder(m, out_user), {{DNNL_ARG_FROM, m}, {DNNL_ARG_TO, out_user}}});
        args[arg] = m;
    }
    void reorders(Problem &pb, bool in) {
        for (auto &r : in ? before : after) r.first.execute(pb.strm, r.second);
    }
    void primitive(Problem &pb) { prim.execute(pb.strm, args); }
    void whole(Problem &pb) {
        reorders(pb, true);
        primitive(pb);
        reorders(pb, false);
        pb.strm.wait();
    }
    bool has_reorders() const { return !before.empty() || !after.empty(); }
};

struct Inputs {
    memory x, w, dy;
};

Run make_run(Problem &pb, const Inputs &in, const std::string &dir, Variant v) {
    Run r;
    auto fwd = pb.fwd_pd(v);
    if (dir == "fwd") {
        r.prim = dnnl::convolution_forward(fwd);
        r.impl = fwd.impl_info_str();
        r.bind_input(pb, DNNL_ARG_SRC, in.x, fwd.src_desc());
        r.bind_input(pb, DNNL_ARG_WEIGHTS, in.w, fwd.weights_desc());
        r.bind_output(pb, DNNL_ARG_DST, pb.dst, fwd.dst_desc());
    } else if (dir == "bwd_data") {
        dnnl::convolution_backward_data::primitive_desc pd(
            pb.eng, dnnl::algorithm::convolution_direct, pb.act(v, pb.src), pb.kern(v),
            pb.act(v, pb.dst),
            pb.strides, pb.pad_l, pb.pad_r, fwd);
        r.prim = dnnl::convolution_backward_data(pd);
        r.impl = pd.impl_info_str();
        r.bind_input(pb, DNNL_ARG_DIFF_DST, in.dy, pd.diff_dst_desc());
        r.bind_input(pb, DNNL_ARG_WEIGHTS, in.w, pd.weights_desc());
        r.bind_output(pb, DNNL_ARG_DIFF_SRC, pb.src, pd.diff_src_desc());
    } else if (dir == "bwd_weights") {
        dnnl::convolution_backward_weights::primitive_desc pd(
            pb.eng, dnnl::algorithm::convolution_direct, pb.act(v, pb.src), pb.kern(v),
            pb.act(v, pb.dst),
            pb.strides, pb.pad_l, pb.pad_r, fwd);
        r.prim = dnnl::convolution_backward_weights(pd);
        r.impl = pd.impl_info_str();
        r.bind_input(pb, DNNL_ARG_SRC, in.x, pd.src_desc());
        r.bind_input(pb, DNNL_ARG_DIFF_DST, in.dy, pd.diff_dst_desc());
        r.bind_output(pb, DNNL_ARG_DIFF_WEIGHTS, pb.wei, pd.diff_weights_desc());
    } else {
        throw std::runtime_error("bad direction " + dir);
    }
    return r;
}

Inputs make_inputs(Problem &pb) { return {pb.filled(pb.src, 1), pb.filled(pb.wei, 2), pb.filled(pb.dst, 3)}; }

const char *DIRS[] = {"fwd", "bwd_data", "bwd_weights"};

void write_raw(const memory &m, const std::string &path) {
    size_t bytes = m.get_desc().get_size();
    void *ptr = m.map_data();
    std::ofstream(path, std::ios::binary).write(static_cast<const char *>(ptr), bytes);
    m.unmap_data(ptr);
}

int check(Problem &pb, const std::string &outdir) {
    Inputs in = make_inputs(pb);
    for (const char *dir : DIRS) {
        for (Variant v : {USER, WANY, ANY}) {
            Run r = make_run(pb, in, dir, v);
            r.whole(pb);
            write_raw(r.out_user, outdir + "/" + dir + "_" + VARIANT_NAMES[v] + ".bin");
            std::printf("{\"dir\":\"%s\",\"variant\":\"%s\",\"impl\":\"%s\"}\n", dir,
                        VARIANT_NAMES[v], r.impl.c_str());
        }
    }
    return 0;
}

int time_shape(Problem &pb, const std::string &shape_text, int reps) {
    Inputs in = make_inputs(pb);
    for (const char *dir : DIRS) {
        Run user = make_run(pb, in, dir, USER);
        Run wany = make_run(pb, in, dir, WANY);
        Run blocked = make_run(pb, in, dir, ANY);
        double user_ms = median_ms([&] { user.whole(pb); }, reps);
        double wany_ms = median_ms([&] { wany.whole(pb); }, reps);
        blocked.whole(pb);  // the primitive's inputs now hold the reordered values
        double alone = median_ms([&] { blocked.primitive(pb); pb.strm.wait(); }, reps);
        double with = median_ms([&] { blocked.whole(pb); }, reps);
        std::printf(
            "{\"shape\":\"%s\",\"dir\":\"%s\",\"user_ms\":%.5f,\"wany_ms\":%.5f,"
            "\"any_ms\":%.5f,\"any_reorder_ms\":%.5f,\"impl_user\":\"%s\","
            "\"impl_wany\":\"%s\",\"impl_any\":\"%s\"}\n",
            shape_text.c_str(), dir, user_ms, wany_ms, alone, with, user.impl.c_str(),
            wany.impl.c_str(), blocked.impl.c_str());
        std::fflush(stdout);
    }
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    try {
        if (argc < 4) throw std::runtime_error("usage: see the header of conv_spike.cpp");
        std::string mode = argv[1], dtype = argv[2];
        if (dtype != "f32" && dtype != "bf16") throw std::runtime_error("DTYPE: f32 or bf16");
        dt type = dtype == "f32" ? dt::f32 : dt::bf16;
        if (mode == "check" && argc == 5) {
            Problem pb(parse_shape(argv[3]), type);
            return check(pb, argv[4]);
        }
        if (mode == "time" && argc >= 5) {
            int reps = std::atoi(argv[3]);
            for (int i = 4; i < argc; ++i) {
                Problem pb(parse_shape(argv[i]), type);
                time_shape(pb, argv[i], reps);
            }
            return 0;
        }
        throw std::runtime_error("usage: see the header of conv_spike.cpp");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "conv_spike: %s\n", e.what());
        return 1;
    }
}
